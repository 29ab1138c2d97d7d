/** Exit codes, documented in the README. BSD sysexits values where one fits, so systemd names them. */
export const ExitCode = {
  ok: 0,
  /** status: rules installed but not what the flags ask for. */
  drifted: 3,
  /** status: no rules installed. */
  absent: 4,
  /** verify: a connection was not redirected to the proxy's port (or DNS not to Consul DNS). */
  notRedirected: 5,
  usage: 64,
  /** The agent answered with something that is not a valid proxy registration. */
  badRegistration: 65,
  /** The agent is unreachable, or the proxy is not registered. */
  unavailable: 69,
  internal: 70,
  /** iptables-restore or another system command failed. */
  systemCommand: 71,
  /** A required program (iptables, nsenter) is missing. */
  missingProgram: 72,
  /** The -metrics-file could not be written. */
  cantCreate: 73,
  /** Retryable: the xtables lock or a concurrent writer kept the table busy. */
  tempFail: 75,
  /** Not root, no CAP_NET_ADMIN, or the agent denied the ACL token. */
  noPermission: 77,
  /** A config file, or a refusal (SSH capture) that a flag overrides. */
  config: 78,
} as const;

/** An expected failure: printed as one line on stderr, exits with `exitCode`. */
export class CliError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.exitCode = exitCode;
  }
}

export class UsageError extends CliError {
  constructor(message: string) {
    super(message, ExitCode.usage);
  }
}

export class ConfigError extends CliError {
  constructor(message: string) {
    super(message, ExitCode.config);
  }
}

/** A value that failed validation: names the flag (or config key) and the offending value. */
export function invalidValue(flag: string, value: string, reason: string): UsageError {
  return new UsageError(`invalid value ${JSON.stringify(value)} for ${flag}: ${reason}`);
}
