import type { Logger, Output } from '../log.ts';
import type { AgentOptions, HostOptions } from '../options.ts';
import type { ProxyPorts } from '../core/registration.ts';
import type { BackendKind, BackendName, BackendProvider, TableSurvey } from '../host/backend.ts';
import type { NamespaceLock } from '../host/exclusive.ts';
import type { ProbeOutcome } from '../host/probe.ts';
import type { ApplyRecord } from '../host/record.ts';
import type { ChangeFeed } from '../host/monitor.ts';
import type { StopRequest } from '../host/lifecycle.ts';
import type { BlockingQuery, VersionedPorts } from '../consul/agent.ts';
import type { CommandRunner } from '../host/runner.ts';
import type { ProbePlan } from '../core/verification.ts';

/** What a survey of a namespace found. */
export interface Survey {
  tables: TableSurvey[];
  /** The namespace has a global IPv6 address, whose traffic IPv4-only rules would not see. */
  globalIpv6: boolean;
  /** Our chains in tables no installed program can read or write (nft sees iptables-nft's): a full survey only. */
  unmanageable: { label: string; chains: string[] }[];
}

/** The firewall backends, as the commands see them. */
export interface Backends {
  /**
   * Reads every installed backend's tables in a namespace (this process's without one); with `kinds`, only
   * those backends' (watch's frequent checks read the backend it keeps, and all of them now and then).
   */
  survey(netns: string | undefined, kinds?: readonly BackendKind[]): Promise<Survey>;
  /** The iptables variant plain `iptables` is on this host. */
  systemDefault(): BackendName | undefined;
  /** The backend a dry run shows: the one asked for, else iptables unless only nft is installed. */
  dryRunProvider(host: Pick<HostOptions, 'backend'>): BackendProvider;
  /** What a cleanup removes from each backend, when the tables cannot be read. */
  dryRunRemovals(host: Pick<HostOptions, 'backend'>): BackendProvider[];
  /**
   * Hears changes to `backend`'s tables in a namespace as the kernel commits them (`nft monitor`), or
   * undefined where they can only be polled (iptables-legacy).
   */
  listen(netns: string | undefined, backend: BackendName, onChange: (event: string) => void): Promise<ChangeFeed | undefined>;
}

export interface ApplyRecords {
  read(netns: string | undefined): ApplyRecord | undefined;
  /** False when it could not be written (a read-only /run): nothing depends on it but a bare `status`. */
  write(netns: string | undefined, record: ApplyRecord): boolean;
  remove(netns: string | undefined): void;
}

/** Everything a command needs from the outside world; tests pass their own. */
export interface CommandContext {
  output: Output;
  log: Logger;
  env: NodeJS.ProcessEnv;
  version: string;
  /** Runs programs; with a netns path, inside that network namespace. */
  runner(netns?: string): CommandRunner;
  backends: Backends;
  /** Waits to be the only writer of the namespace's rules; released when the returned lock is. */
  lockNamespace(netns: string | undefined): Promise<NamespaceLock>;
  /** Runs `work` with SIGTERM and SIGINT held back until it is done: writes finish or roll back, never stop halfway. */
  deferSignals<T>(work: () => Promise<T>): Promise<T>;
  /** What the last apply in a namespace asked for (host/record.ts). */
  records: ApplyRecords;
  /** Reads the proxy's ports from the Consul agent. */
  fetchProxyPorts(agent: AgentOptions, proxyId: string, log: Logger): Promise<ProxyPorts>;
  /** verify: runs the probe inside the namespace (this process's without one) and reports what it saw. */
  probe(netns: string | undefined, plan: ProbePlan): Promise<ProbeOutcome>;
  /** Milliseconds since this run started (for the CLI, since the process started). */
  elapsedMs(): number;
  /**
   * Reads the proxy's ports and the registration's version; with `block`, a blocking query that the agent
   * answers when the registration changes or the wait passes.
   */
  readProxyPorts(agent: AgentOptions, proxyId: string, log: Logger, block?: BlockingQuery): Promise<VersionedPorts>;
  /** Claims the right to watch a namespace's rules: one watch per namespace; refuses at once if another holds it. */
  claimWatch(netns: string | undefined): Promise<NamespaceLock>;
  /** Resolves when SIGTERM or SIGINT asks a long-running command to stop. */
  untilStopped(): StopRequest;
  /** Tells the service manager that start-up is done (systemd's Type=notify); does nothing outside one. */
  notifyReady(): Promise<void>;
}
