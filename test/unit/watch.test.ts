import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { Backends, CommandContext } from '../../src/commands/context.ts';
import { changedPorts, repairText, watch, type WatchTuning } from '../../src/commands/watch.ts';
import type { Dialect } from '../../src/core/dialect.ts';
import type { ProxyPorts } from '../../src/core/registration.ts';
import type { RedirectConfig } from '../../src/core/ruleset.ts';
import { CliError, ExitCode, TemporaryError } from '../../src/errors.ts';
import type { FirewallTable, TableSurvey } from '../../src/host/backend.ts';
import { TransientAgentError } from '../../src/consul/retry.ts';
import { watchOptions, type WatchOptions } from '../../src/options.ts';
import { createLogger } from '../../src/log.ts';
import { captureOutput, fakeRunner, memoryRecords, redirectConfig, scratchDir } from '../helpers/fakes.ts';

// The watch loop with every outside thing faked: a firewall table held in memory, change events fired by the
// test, the agent's answers, the signal. Root is not needed (requireNetAdmin is stubbed).
vi.mock('../../src/host/system.ts', async (importOriginal) => ({
  ...(await importOriginal<typeof import('../../src/host/system.ts')>()),
  requireNetAdmin: () => undefined,
}));

const scratch = scratchDir('redirect-traffic-watch-');
afterAll(() => scratch.remove());

const TUNING: WatchTuning = { debounceMs: 40, agentWaitSeconds: 1, agentRetryMinMs: 20, agentRetryMaxMs: 80, monitorRestartMs: 50 };

/** Our rules are the dump's lines that start with "ours "; everything else is someone else's. */
const toyDialect: Dialect<string[]> = {
  wanted: (config: RedirectConfig | undefined) =>
    config === undefined ? [] : [`ours inbound ${config.inboundPort}`, `ours outbound ${config.outboundPort}`],
  parse: (dump) => dump.split('\n').filter((line) => line.startsWith('ours ')),
  isEmpty: (state) => state.length === 0,
  same: (installed, wanted) => installed.join('\n') === wanted.join('\n'),
  differences: (installed, wanted) => [
    ...wanted.filter((rule) => !installed.includes(rule)).map((rule) => `missing ${rule}`),
    ...installed.filter((rule) => !wanted.includes(rule)).map((rule) => `unexpected ${rule}`),
  ],
  transaction: (_installed, wanted) => wanted.join('\n'),
  foreignRulesRemoved: () => [],
  describe: (state) => ({ chains: { OURS: state.length }, hooks: [], rules: state.length }),
};

/** One in-memory table: `foreign` lines someone else owns, `ours` the rules a write sets. */
function toyFirewall() {
  const kernel = { ours: [] as string[], foreign: ['docker 1'] as string[] };
  const dump = () => [...kernel.foreign, ...kernel.ours].join('\n');
  let listener: ((event: string) => void) | undefined;
  const counts = { surveys: 0, writes: 0 };
  const table: FirewallTable<string[]> = {
    backend: 'nftables',
    families: [4, 6],
    label: 'nftables inet toy',
    dialect: toyDialect,
    read: async () => dump(),
    async write(transaction) {
      counts.writes += 1;
      kernel.ours = transaction === '' ? [] : transaction.split('\n');
      // As nft monitor does: our own write is heard too.
      queueMicrotask(() => listener?.('add rule inet toy ours'));
    },
  };
  const backends: Backends = {
    async survey() {
      counts.surveys += 1;
      const text = dump();
      const state = toyDialect.parse(text);
      return { tables: [{ table, dump: text, state, holdsOurs: state.length > 0, holdsRules: text !== '' } as TableSurvey], globalIpv6: false, unmanageable: [] };
    },
    systemDefault: () => undefined,
    dryRunProvider: () => {
      throw new Error('not in this test');
    },
    dryRunRemovals: () => [],
    async listen(_netns, _backend, onChange) {
      listener = onChange;
      return { stop: () => (listener = undefined), ended: new Promise<string>(() => undefined) };
    },
  };
  return {
    kernel,
    counts,
    backends,
    /** A change someone else makes, heard as a monitor event. */
    change(mutate: () => void, event = 'delete rule inet toy x') {
      mutate();
      listener?.(event);
    },
    listening: () => listener !== undefined,
  };
}

type Fw = ReturnType<typeof toyFirewall>;

/** A watch's options as the flags give them, checking once a minute unless overridden. */
function options(overrides: Partial<WatchOptions> = {}): WatchOptions {
  const parsed = watchOptions({ 'proxy-uid': '101', 'proxy-inbound-port': '20000', backend: 'nftables' }, {});
  return { ...parsed, intervalMs: 60_000, ...overrides };
}

/** Starts a watch; `stop()` sends the signal and returns its exit code. */
function startWatch(fw: Fw, watchOptions: WatchOptions, extra: Partial<CommandContext> = {}) {
  const captured = captureOutput();
  let signal: (name: NodeJS.Signals) => void = () => undefined;
  const stopped = new Promise<NodeJS.Signals>((resolve) => (signal = resolve));
  let ready = 0;
  const context: CommandContext = {
    output: captured.output,
    log: createLogger(captured.output, { debug: false }),
    env: {},
    version: 'test',
    runner: fakeRunner().factory,
    backends: fw.backends,
    lockNamespace: async () => ({ release: () => undefined }),
    deferSignals: (work) => work(),
    fetchProxyPorts: async () => {
      throw new Error('not in this test');
    },
    readProxyPorts: async () => {
      throw new Error('not in this test');
    },
    claimWatch: async () => ({ release: () => undefined }),
    records: memoryRecords(),
    probe: async () => {
      throw new Error('not in this test');
    },
    elapsedMs: () => 0,
    untilStopped: () => ({ stopped, dispose: () => undefined }),
    notifyReady: async () => {
      ready += 1;
    },
    ...extra,
  };
  const exit = watch(watchOptions, context, TUNING);
  return {
    captured,
    readyCount: () => ready,
    exit,
    async stop() {
      signal('SIGTERM');
      return exit;
    },
  };
}

async function until(condition: () => boolean, what: string, timeoutMs = 2000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** Lets pending debounce timers and checks run. */
const settle = () => sleep(TUNING.debounceMs * 4);

describe('watch loop', () => {
  it('applies, tells the service manager once, and stops on the signal with exit 0, leaving the rules', async () => {
    const fw = toyFirewall();
    const run = startWatch(fw, options());
    await until(() => run.readyCount() === 1 && fw.listening(), 'ready');
    expect(fw.kernel.ours).toEqual(['ours inbound 20000', 'ours outbound 15001']);
    expect(run.captured.stdout()).toMatch(/^applied traffic redirection \(nftables/);
    expect(await run.stop()).toBe(ExitCode.ok);
    expect(fw.kernel.ours).toHaveLength(2);
    expect(run.captured.stderr()).toMatch(/received SIGTERM: stopped watching .*the rules stay in place/);
  });

  it('folds a burst of events into one check, and changes nothing when only foreign rules changed', async () => {
    const fw = toyFirewall();
    const run = startWatch(fw, options());
    await until(() => run.readyCount() === 1 && fw.listening(), 'ready');
    await settle();
    const before = { ...fw.counts };
    for (let i = 0; i < 20; i++) fw.change(() => fw.kernel.foreign.push(`docker ${i}`), `add rule ip filter DOCKER ${i}`);
    await settle();
    expect(fw.counts.surveys - before.surveys).toBe(1);
    expect(fw.counts.writes).toBe(before.writes);
    expect(run.captured.stderr()).not.toMatch(/repaired/);
    await run.stop();
  });

  it('repairs our rules once, logs what was missing, counts it, and its own write causes no second repair', async () => {
    const fw = toyFirewall();
    const metricsFile = `${scratch.dir}/repair.prom`;
    const run = startWatch(fw, options({ metricsFile }));
    await until(() => run.readyCount() === 1 && fw.listening(), 'ready');
    await settle();
    const writes = fw.counts.writes;
    fw.change(() => (fw.kernel.ours = ['ours outbound 15001']));
    await until(() => fw.kernel.ours.length === 2, 'the repair');
    await settle();
    expect(fw.counts.writes).toBe(writes + 1);
    const repairs = run.captured.stderrLines().filter((line) => line.includes('repaired'));
    expect(repairs).toEqual(['redirect-traffic: warning: repaired nftables inet toy: missing ours inbound 20000']);
    const { readFileSync } = await import('node:fs');
    expect(readFileSync(metricsFile, 'utf8')).toMatch(/^redirect_traffic_repairs_total 1$/m);
    expect(readFileSync(metricsFile, 'utf8')).toMatch(/^redirect_traffic_in_sync 1$/m);
    await run.stop();
  });

  it('holds back a repair of the very same drift right after the last one, so that a fight is not a write loop', async () => {
    const fw = toyFirewall();
    const run = startWatch(fw, options());
    await until(() => run.readyCount() === 1 && fw.listening(), 'ready');
    await settle();
    // From now on something undoes each of our writes a moment later (another tool, or a backend that reads
    // our rules back otherwise): each write's own event, then the undoing, start checks.
    const writes = fw.counts.writes;
    const undo = () => setTimeout(() => fw.change(() => (fw.kernel.ours = ['ours outbound 15001'])), 20);
    fw.change(() => (fw.kernel.ours = ['ours outbound 15001']));
    await until(() => fw.counts.writes === writes + 1, 'the first repair');
    undo();
    await sleep(600);
    expect(fw.counts.writes).toBe(writes + 1);
    const errors = run.captured.stderrLines().filter((line) => line.includes('drifted the same way again'));
    expect(errors).toEqual([
      'redirect-traffic: error: the rules drifted the same way again right after a repair (something undoes each write, or the backend reads our rules back spelled otherwise); not repairing it again for 10s; see `redirect-traffic status`',
    ]);
    await run.stop();
  });

  it('polls every -interval where no events come (iptables-legacy), and repairs what it finds', async () => {
    const fw = toyFirewall();
    fw.backends.listen = async () => undefined;
    const run = startWatch(fw, options({ intervalMs: 100 }));
    await until(() => run.readyCount() === 1, 'ready');
    fw.kernel.ours = [];
    await until(() => fw.kernel.ours.length === 2, 'the repair by polling');
    expect(run.captured.stderr()).toMatch(/repaired nftables inet toy: missing ours inbound 20000, missing ours outbound 15001/);
    await run.stop();
  });

  it('tries a failed check again within about a second, without waiting for the next poll or event', async () => {
    const fw = toyFirewall();
    let refusals = 0;
    let applied = false;
    const run = startWatch(fw, options({ intervalMs: 600_000 }), {
      lockNamespace: async () => {
        // The first apply gets the lock; the first repair's check finds it held once.
        if (applied && refusals === 0) {
          refusals += 1;
          throw new TemporaryError('redirect-traffic (pid 7) is changing the rules of this network namespace');
        }
        applied = true;
        return { release: () => undefined };
      },
    });
    await until(() => run.readyCount() === 1 && fw.listening(), 'ready');
    await settle();
    fw.change(() => (fw.kernel.ours = []));
    await until(() => fw.kernel.ours.length === 2, 'the repair on the retry');
    expect(refusals).toBe(1);
    expect(run.captured.stderr()).toMatch(/checking the rules failed, trying again in 1s \(and on the next change\): redirect-traffic \(pid 7\)/);
    await run.stop();
  });

  it('lets a repair under way finish before it returns on the signal', async () => {
    const fw = toyFirewall();
    let releaseLock: () => void = () => undefined;
    let locked = false;
    const run = startWatch(fw, options(), {
      lockNamespace: async () => {
        // The first apply's lock is free; a repair's waits for the test.
        if (locked) await new Promise<void>((resolve) => (releaseLock = resolve));
        locked = true;
        return { release: () => undefined };
      },
    });
    await until(() => run.readyCount() === 1 && fw.listening(), 'ready');
    await settle();
    fw.change(() => (fw.kernel.ours = []));
    await sleep(TUNING.debounceMs * 3);
    let returned = false;
    const exit = run.stop().then((code) => ((returned = true), code));
    await sleep(50);
    expect(returned).toBe(false);
    releaseLock();
    expect(await exit).toBe(ExitCode.ok);
    expect(fw.kernel.ours).toHaveLength(2);
  });

  it('refuses a second watch on the namespace with exit 78 and says why', async () => {
    const fw = toyFirewall();
    const run = startWatch(fw, options(), {
      claimWatch: async () => {
        throw new CliError('redirect-traffic (pid 42) is already watching this network namespace', 'temporary');
      },
    });
    await expect(run.exit).rejects.toMatchObject({ exitCode: ExitCode.config, message: expect.stringMatching(/pid 42.*stop the other one first/) });
    expect(fw.counts.surveys).toBe(0);
  });
});

describe('watch with -proxy-id', () => {
  const ports = (inboundPort: number): ProxyPorts => ({ inboundPort, outboundPort: 15001, excludeInboundPorts: [] });
  const agentOptions = { agent: {} as WatchOptions['agent'], rules: { ...options().rules, proxyId: 'web-sidecar-proxy', inboundPort: undefined } };

  it('applies a changed registration without a restart, as an update and not a repair', async () => {
    const fw = toyFirewall();
    const answers: ((value: { ports: ProxyPorts; version: string }) => void)[] = [];
    const blocks: unknown[] = [];
    const run = startWatch(fw, options(agentOptions), {
      readProxyPorts: async (_agent, _id, _log, block) => {
        blocks.push(block);
        if (block === undefined) return { ports: ports(21000), version: 'h1' };
        return new Promise((resolve) => answers.push(resolve));
      },
    });
    await until(() => answers.length === 1, 'the first blocking query');
    expect(blocks[1]).toEqual({ since: 'h1', waitSeconds: TUNING.agentWaitSeconds });
    expect(fw.kernel.ours).toEqual(['ours inbound 21000', 'ours outbound 15001']);
    answers[0]?.({ ports: ports(21001), version: 'h2' });
    await until(() => fw.kernel.ours.includes('ours inbound 21001'), 'the new registration applied');
    await until(() => answers.length === 2, 'the next blocking query');
    expect(blocks[2]).toEqual({ since: 'h2', waitSeconds: TUNING.agentWaitSeconds });
    const log = run.captured.stderr();
    expect(log).toMatch(/the registration of web-sidecar-proxy changed: inbound port 21000 -> 21001/);
    expect(log).toMatch(/applied the changed registration/);
    expect(log).not.toMatch(/repaired/);
    await run.stop();
  });

  it('keeps the rules while the agent is away, says so once per outage, and retries with backoff', async () => {
    const fw = toyFirewall();
    let calls = 0;
    let down = true;
    const run = startWatch(fw, options(agentOptions), {
      readProxyPorts: async (_agent, _id, _log, block) => {
        calls += 1;
        if (calls > 1 && down) throw new TransientAgentError('cannot reach the Consul agent at 127.0.0.1:8500 (connection refused)', 'the agent');
        // After an outage the first question does not block, so the agent's return is heard at once.
        if (block === undefined) return { ports: ports(21000), version: 'h1' };
        return new Promise(() => undefined);
      },
    });
    await until(() => calls >= 5, 'several retries');
    down = false;
    await until(() => run.captured.stderr().includes('answers again'), 'the recovery');
    const lines = run.captured.stderrLines();
    expect(lines.filter((line) => line.includes('cannot reach the Consul agent'))).toHaveLength(1);
    expect(lines.find((line) => line.includes('cannot reach'))).toMatch(/the rules in place stay as they are/);
    expect(fw.kernel.ours).toEqual(['ours inbound 21000', 'ours outbound 15001']);
    await run.stop();
  });
});

describe('repair and update messages', () => {
  it('names each table once and caps the differences', () => {
    const lines = Array.from({ length: 7 }, (_, i) => `iptables-nft IPv4: missing    -A CONSUL_PROXY_OUTPUT rule ${i}`);
    expect(repairText([...lines, 'iptables-nft IPv6: chain CONSUL_PROXY_OUTPUT is missing'])).toBe(
      'iptables-nft IPv4: missing -A CONSUL_PROXY_OUTPUT rule 0, missing -A CONSUL_PROXY_OUTPUT rule 1, missing -A CONSUL_PROXY_OUTPUT rule 2, ' +
        'missing -A CONSUL_PROXY_OUTPUT rule 3, missing -A CONSUL_PROXY_OUTPUT rule 4, and 2 more; iptables-nft IPv6: chain CONSUL_PROXY_OUTPUT is missing',
    );
  });

  it('says which ports a registration change moves', () => {
    const before = redirectConfig({ inboundPort: 21000, excludeInboundPorts: [{ low: 9102, high: 9102 }] });
    const after = redirectConfig({ inboundPort: 21001, excludeInboundPorts: [{ low: 9102, high: 9102 }, { low: 21500, high: 21500 }] });
    expect(changedPorts(before, after)).toBe('inbound port 21000 -> 21001, excluded inbound ports 9102 -> 9102,21500');
  });
});
