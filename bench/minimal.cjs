// The least a Node program writing a namespace's table can spend: Node's start-up, node:child_process, and
// children, nothing parsed, checked or decided. bench/run.mjs times it beside the tool, to show how much of the
// tool's cost over the floor any Node program would pay.
//   read-write: one read, then the write (two nsenters), the least any read-then-write tool pays;
//   processes:  the programs an apply runs, in one shell inside the namespace as the tool runs them: both
//               families and the other backend's table read, the write, the read-back. What is left between
//               this and the tool is the tool's own JavaScript.
// Usage: node bench/minimal.cjs iptables|nftables read-write|processes <netns path> <transaction file>
'use strict';
const { execFile } = require('node:child_process');
const { readFileSync } = require('node:fs');

const [backend, shape, netns, transactionFile] = process.argv.slice(2);
const nftables = backend === 'nftables';
const inNamespace = (argv, input) =>
  new Promise((resolve, reject) => {
    const child = execFile('nsenter', [`--net=${netns}`, '--', ...argv], (error, stdout) => (error ? reject(error) : resolve(stdout)));
    // A reader exits without reading its input: that closed pipe is no error.
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });

async function readThenWrite() {
  await inNamespace(nftables ? ['nft', '-j', 'list', 'ruleset'] : ['iptables-save', '-t', 'nat']);
  await inNamespace(nftables ? ['nft', '-f', '-'] : ['iptables-restore', '--noflush'], readFileSync(transactionFile, 'utf8'));
}

async function applysProcesses() {
  // The tool checks an iptables write by reading it back; an nft transaction is checked by nft itself.
  const write = nftables ? 'nft -f "$1"' : 'iptables-restore --noflush <"$1" && iptables-save -t nat';
  // The table does not exist before the write: that read fails, as it does for the tool.
  const script = `iptables-save; ip6tables-save; nft -j list table inet consul_tproxy 2>/dev/null; ${write}`;
  await inNamespace(['sh', '-c', script, 'sh', transactionFile]);
}

(shape === 'processes' ? applysProcesses() : readThenWrite()).catch((error) => {
  console.error(error.message);
  process.exit(1);
});
