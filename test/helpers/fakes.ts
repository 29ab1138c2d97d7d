import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import type { CommandContext } from '../../src/commands/context.ts';
import type { RedirectConfig } from '../../src/core/ruleset.ts';
import { BASE } from '../fixtures/nft/variants.ts';
import type { PortRange } from '../../src/core/values.ts';
import type { CommandResult, CommandRunner } from '../../src/host/runner.ts';
import type { ApplyRecord } from '../../src/host/record.ts';
import type { Output } from '../../src/log.ts';

// Fakes for running the CLI in-process: no root, no iptables, no network.

/** A resolved config: Consul's base case (reference §3.2: uid 123, inbound 20000, outbound 15001), overridable. */
export function redirectConfig(overrides: Partial<RedirectConfig> = {}): RedirectConfig {
  return { ...BASE, ...overrides };
}

/** Ports or ranges as the flags write them (`22`, `8300:8302`), typed. */
export function portRanges(...texts: string[]): PortRange[] {
  return texts.map((text) => {
    const [low = 0, high = low] = text.split(':').map(Number);
    return { low, high };
  });
}

/** Records of applies kept in memory: tests never write under /run. */
export function memoryRecords(): CommandContext['records'] {
  const records = new Map<string | undefined, ApplyRecord>();
  return { read: (netns) => records.get(netns), write: (netns, record) => Boolean(records.set(netns, record)), remove: (netns) => void records.delete(netns) };
}

/** Everything written to stdout/stderr, kept apart. */
export interface CapturedOutput {
  output: Output;
  stdout(): string;
  stderr(): string;
  /** stderr split into lines, without the empty remainder after the final newline. */
  stderrLines(): string[];
}

export function captureOutput(): CapturedOutput {
  let out = '';
  let err = '';
  return {
    output: {
      stdout: (text) => {
        out += text;
      },
      stderr: (text) => {
        err += text;
      },
    },
    stdout: () => out,
    stderr: () => err,
    stderrLines: () => err.split('\n').filter((line, i, all) => !(line === '' && i === all.length - 1)),
  };
}

export interface RecordedCall {
  netns: string | undefined;
  program: string;
  args: readonly string[];
  input: string | undefined;
}

/** Answers an allowed call; `undefined` means the call is not allowed. */
export type CallHandler = (program: string, args: readonly string[]) => CommandResult | undefined;

export interface FakeRunner {
  /** Drop-in for `CommandContext.runner`. */
  factory: (netns?: string) => CommandRunner;
  /** Every call, allowed or not. */
  calls: RecordedCall[];
  /** Calls the handler did not allow: a test expecting no process must see this empty. */
  unexpected: RecordedCall[];
}

/**
 * A runner that records every call. Calls the handler refuses are recorded as unexpected and answered
 * with a failure (not thrown: the code under test may swallow exceptions, the record survives).
 */
export function fakeRunner(handler: CallHandler = () => undefined): FakeRunner {
  const calls: RecordedCall[] = [];
  const unexpected: RecordedCall[] = [];
  return {
    calls,
    unexpected,
    factory: (netns) => ({
      async run(program, args, options = {}) {
        const call = { netns, program, args: [...args], input: options.input };
        calls.push(call);
        const answer = handler(program, args);
        if (answer) return answer;
        unexpected.push(call);
        return { exitCode: 127, stdout: '', stderr: `fake runner: ${program} is not allowed in this test\n` };
      },
      // No long-running program is allowed in these tests: it is recorded, and "fails to start".
      async spawnLines(program, args) {
        const call = { netns, program, args: [...args], input: undefined };
        calls.push(call);
        unexpected.push(call);
        return { stop: () => undefined, exited: Promise.resolve({ exitCode: null, signal: null, stderr: '', error: 'not allowed in this test' }) };
      },
    }),
  };
}

/** Allows only `getent passwd <name>` (user names not in /etc/passwd), answering "no such user". */
export const allowGetent: CallHandler = (program, args) =>
  program === 'getent' && args[0] === 'passwd' ? { exitCode: 2, stdout: '', stderr: '' } : undefined;

/** Allows `getent passwd <name>` and answers it from a fake NSS database (e.g. LDAP users). */
export function fakeNss(users: Record<string, number>): CallHandler {
  return (program, args) => {
    if (program !== 'getent' || args[0] !== 'passwd') return undefined;
    const name = args[1] ?? '';
    const uid = users[name];
    return uid === undefined
      ? { exitCode: 2, stdout: '', stderr: '' }
      : { exitCode: 0, stdout: `${name}:x:${uid}:${uid}::/nonexistent:/usr/sbin/nologin\n`, stderr: '' };
  };
}

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  stderrLines: string[];
  runner: FakeRunner;
  agentCalls: number;
}

export interface CliRunOptions {
  env?: NodeJS.ProcessEnv;
  /** Which runner calls are allowed (default: none). */
  allow?: CallHandler;
}

/**
 * Runs the CLI in-process with fakes and checks that no process outside `allow` was started and the agent
 * was never asked (nothing in these unit tests may touch the host or the network).
 */
export async function runCli(argv: readonly string[], options: CliRunOptions = {}): Promise<CliRun> {
  const captured = captureOutput();
  const runner = fakeRunner(options.allow);
  let agentCalls = 0;
  const fetchProxyPorts: CommandContext['fetchProxyPorts'] = async () => {
    agentCalls += 1;
    throw new Error('fake agent: no agent in unit tests');
  };
  // Imported late so that test files mocking modules (node:fs, chalk) get them mocked in the CLI too.
  const { run } = await import('../../src/main.ts');
  const code = await run(argv, {
    output: captured.output,
    env: options.env ?? {},
    runner: runner.factory,
    fetchProxyPorts,
    records: memoryRecords(),
  });
  expect(runner.unexpected, `unexpected processes for ${JSON.stringify(argv)}`).toEqual([]);
  return {
    code,
    stdout: captured.stdout(),
    stderr: captured.stderr(),
    stderrLines: captured.stderrLines(),
    runner,
    agentCalls,
  };
}

/** A scratch directory removed by the returned cleanup; `write` puts a file in it and returns its path. */
export function scratchDir(prefix = 'redirect-traffic-unit-'): {
  dir: string;
  write(name: string, content: string | object): string;
  remove(): void;
} {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return {
    dir,
    write(name, content) {
      const path = join(dir, name);
      writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
      return path;
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
