// The least a Node program that reads a namespace's table and then writes a transaction can spend: Node's
// start-up, node:child_process, and two children (nsenter plus the program), nothing parsed, checked or
// decided. bench/run.mjs times it beside the tool, to show how much of the tool's cost over the floor any
// Node program would pay.
// Usage: node bench/minimal.cjs iptables|nftables <netns path> <transaction file>
'use strict';
const { execFile } = require('node:child_process');
const { readFileSync } = require('node:fs');

const [backend, netns, transactionFile] = process.argv.slice(2);
const [read, write] =
  backend === 'nftables'
    ? [['nft', '-j', 'list', 'ruleset'], ['nft', '-f', '-']]
    : [['iptables-save', '-t', 'nat'], ['iptables-restore', '--noflush']];
const inNamespace = (argv, input) =>
  new Promise((resolve, reject) => {
    const child = execFile('nsenter', [`--net=${netns}`, '--', ...argv], (error, stdout) => (error ? reject(error) : resolve(stdout)));
    // A reader exits without reading its input: that closed pipe is no error.
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });

(async () => {
  await inNamespace(read);
  await inNamespace(write, readFileSync(transactionFile, 'utf8'));
})().catch((error) => {
  console.error(error.message);
  process.exit(1);
});
