import { afterAll, describe, expect, it } from 'vitest';
import { Command } from 'commander';
import { createProgram, normaliseArgv } from '../../src/cli.ts';
import { splitList } from '../../src/core/values.ts';
import { ExitCode } from '../../src/errors.ts';
import { COMMANDS, FLAG_NAMES, FLAG_SPECS, type CommandName, type RawOptions } from '../../src/flags.ts';
import { applyOptions, cleanupOptions, statusOptions } from '../../src/options.ts';
import { runCli, scratchDir } from '../helpers/fakes.ts';

// The flag table (src/flags.ts) is the only list of flags: commander's options, the config-file keys, the
// environment fallbacks and validation all follow it.

const scratch = scratchDir();
afterAll(() => scratch.remove());

const REQUIRED: RawOptions = { 'proxy-uid': '101', 'proxy-inbound-port': '20000' };

/** The long flags a command's --help lists. */
async function helpFlags(command: CommandName): Promise<string[]> {
  const { stdout, code } = await runCli([command, '--help']);
  expect(code).toBe(0);
  return [...stdout.matchAll(/^ {2}--([a-z-]+)/gm)].map((match) => match[1] ?? '').filter((flag) => flag !== 'help');
}

describe('the flag table', () => {
  it.each(COMMANDS)('%s --help lists exactly the flags the table gives it, in table order', async (command) => {
    expect(await helpFlags(command)).toEqual(FLAG_NAMES.filter((name) => FLAG_SPECS[name].commands.includes(command)));
  });

  it('a flag of another command is refused by name', async () => {
    const result = await runCli(['cleanup', '-exclude-uid=1']);
    expect(result.code).toBe(ExitCode.usage);
    expect(result.stderr).toContain("unknown option '--exclude-uid");
  });

  it('every flag is accepted as a config-file key except those describing the invocation', () => {
    for (const name of FLAG_NAMES) {
      const path = scratch.write(`key-${name}.json`, { [name]: 'x' });
      let message = '';
      try {
        cleanupOptions({ config: path }, {});
      } catch (error) {
        message = (error as Error).message;
      }
      expect(message.includes('only accepted on the command line'), name).toBe(FLAG_SPECS[name].commandLineOnly === true);
      expect(message, name).not.toContain('unknown key');
    }
  });

  it('environment fallbacks come from the table and are read only with -proxy-id', () => {
    const withEnv = FLAG_NAMES.filter((name) => FLAG_SPECS[name].env !== undefined);
    expect(withEnv.map((name) => FLAG_SPECS[name].env)).toEqual([
      'CONSUL_HTTP_ADDR',
      'CONSUL_CACERT',
      'CONSUL_CAPATH',
      'CONSUL_CLIENT_CERT',
      'CONSUL_CLIENT_KEY',
      'CONSUL_TLS_SERVER_NAME',
      'CONSUL_NAMESPACE',
      'CONSUL_PARTITION',
    ]);
    const env = { CONSUL_NAMESPACE: 'team-a' };
    expect(applyOptions({ ...REQUIRED, 'proxy-inbound-port': undefined, 'proxy-id': 'web' }, env).agent?.namespace).toBe('team-a');
  });

  it('each rule flag, alone, makes status compare (and so ask for -proxy-uid)', () => {
    const ruleFlags = FLAG_NAMES.filter((name) => FLAG_SPECS[name].rule);
    expect(ruleFlags).toContain('dual-stack');
    for (const name of ruleFlags) {
      const valid: RawOptions = { 'proxy-uid': '1', 'exclude-outbound-cidr': '10.0.0.0/8', 'consul-dns-ip': '10.0.0.53' };
      const value = FLAG_SPECS[name].arity === 'switch' ? true : (valid[name] ?? '22');
      expect(() => statusOptions({ [name]: value }, {}), name).toThrow(/-proxy-uid|-proxy-inbound-port/);
    }
  });

  it('a mistyped flag name does not compile', () => {
    // @ts-expect-error: "proxy-uidd" is not a flag
    const raw: RawOptions = { 'proxy-uidd': '1' };
    expect(raw).toBeDefined();
  });

  it('the help wording of -netns follows the command', async () => {
    const wording = async (command: CommandName) => (await runCli([command, '--help'])).stdout.replace(/\s+/g, ' ');
    expect(await wording('apply')).toContain('--netns <path> apply inside this network namespace');
    expect(await wording('cleanup')).toContain('--netns <path> remove the rules inside this network namespace');
    expect(await wording('status')).toContain('--netns <path> read the rules inside this network namespace');
    expect(await wording('cleanup')).toContain('print the transaction (iptables-restore or nft input) instead of applying it; needs no root');
  });
});

describe('-backend', () => {
  it('defaults to auto, takes iptables or nftables, from a flag or the config file, for every command', () => {
    expect(applyOptions(REQUIRED, {}).host.backend).toBe('auto');
    expect(applyOptions({ ...REQUIRED, backend: 'nftables' }, {}).host.backend).toBe('nftables');
    expect(statusOptions({ backend: 'iptables' }, {}).host.backend).toBe('iptables');
    const path = scratch.write('backend.json', { backend: 'nftables' });
    expect(cleanupOptions({ config: path }, {}).host).toEqual({ netns: undefined, backend: 'nftables', iptablesMode: 'auto' });
  });

  it('refuses anything else, naming the flag, the value and the choices', async () => {
    const result = await runCli(['cleanup', '--dry-run', '-backend=pf']);
    expect(result.code).toBe(ExitCode.usage);
    expect(result.stderrLines).toEqual(['redirect-traffic: error: invalid value "pf" for -backend: must be auto, iptables or nftables']);
  });

  it('is independent of -iptables-mode', () => {
    expect(applyOptions({ ...REQUIRED, backend: 'iptables', 'iptables-mode': 'legacy' }, {}).host).toMatchObject({
      backend: 'iptables',
      iptablesMode: 'legacy',
    });
  });
});

describe('repeated flags (defect 7)', () => {
  // Timing belongs in `npm run bench` (20,000 flags against the same list in -config); here, the cause of the
  // quadratic cost is checked directly: each value must be appended to the one list, not to a copy of it.
  it('are collected into one list, appended in place, not copied for each value', () => {
    const args = normaliseArgv(['--dry-run', '-exclude-outbound-cidr=10.0.0.0/8']);
    const program: Command = createProgram('0.0.0', async () => undefined, args);
    const option = program.options.find((candidate) => candidate.long === '--exclude-outbound-cidr');
    const list = option?.parseArg?.('10.0.0.0/8', undefined as unknown as string[]) as string[];
    const next = option?.parseArg?.('10.1.0.0/16', list) as string[];
    expect(next).toBe(list);
    expect(next).toEqual(['10.0.0.0/8', '10.1.0.0/16']);
  });

  it('of 20,000 values all arrive, in order', async () => {
    const argv = Array.from({ length: 20_000 }, (_, i) => `-exclude-outbound-cidr=10.${(i >> 8) & 255}.${i & 255}.0/24`);
    const args = normaliseArgv(['--dry-run', ...argv]);
    let received: RawOptions = {};
    const program: Command = createProgram('0.0.0', async (_, flags) => {
      received = flags;
    }, args);
    await program.parseAsync(args, { from: 'user' });
    const values = splitList(received['exclude-outbound-cidr'] as string[]);
    expect(values).toHaveLength(20_000);
    expect(values[0]).toBe('10.0.0.0/24');
    expect(values[19_999]).toBe('10.78.31.0/24');
  });

  it('keep their order, and the last of a single-value flag wins (as with Go flags)', async () => {
    const result = await runCli(['--dry-run', '-proxy-uid=1', '-proxy-inbound-port=2', '-proxy-inbound-port=3',
      '-exclude-inbound-port=10', '-exclude-inbound-port=11,12', '-exclude-inbound-port=13']);
    expect(result.stdout).toContain('--to-ports 3');
    expect(result.stdout.match(/--dport (\d+) -j RETURN/g)).toEqual(
      ['13', '12', '11', '10'].map((port) => `--dport ${port} -j RETURN`),
    );
  });
});
