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

/** What went wrong, as far as whoever runs the program cares. */
export type FailureKind =
  | 'usage'
  | 'config'
  | 'badRegistration'
  | 'unavailable'
  | 'internal'
  | 'systemCommand'
  | 'missingProgram'
  | 'temporary'
  | 'noPermission'
  | 'cannotWrite';

/** The one table from failures to exit codes. */
const EXIT_CODE_OF: Readonly<Record<FailureKind, number>> = {
  usage: ExitCode.usage,
  config: ExitCode.config,
  badRegistration: ExitCode.badRegistration,
  unavailable: ExitCode.unavailable,
  internal: ExitCode.internal,
  systemCommand: ExitCode.systemCommand,
  missingProgram: ExitCode.missingProgram,
  temporary: ExitCode.tempFail,
  noPermission: ExitCode.noPermission,
  cannotWrite: ExitCode.cantCreate,
};

/** An expected failure: printed as one line on stderr; its kind gives the exit code. */
export class CliError extends Error {
  readonly kind: FailureKind;
  constructor(message: string, kind: FailureKind, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.kind = kind;
  }

  get exitCode(): number {
    return EXIT_CODE_OF[this.kind];
  }
}

/** A failure of one fixed kind. */
const failureOf = (kind: FailureKind) =>
  class extends CliError {
    constructor(message: string, options?: ErrorOptions) {
      super(message, kind, options);
    }
  };

/** A bad flag, value or combination. */
export class UsageError extends failureOf('usage') {}
/** A bad config file, or a refusal a flag overrides. */
export class ConfigError extends failureOf('config') {}
/** The agent answered with something that is not a valid proxy registration. */
export class BadRegistrationError extends failureOf('badRegistration') {}
/** The agent is unreachable, or the proxy is not registered. */
export class AgentUnavailableError extends failureOf('unavailable') {}
/** A bug: what cannot happen did. */
export class InternalError extends failureOf('internal') {}
/** A system command failed for good. */
export class SystemCommandError extends failureOf('systemCommand') {}
/** A program this needs is not installed; the message names the package. */
export class MissingProgramError extends failureOf('missingProgram') {}
/** Worth trying again later: a lock or a concurrent writer was in the way. */
export class TemporaryError extends failureOf('temporary') {}
/** Not root, no CAP_NET_ADMIN, or the agent refused the token. */
export class PermissionError extends failureOf('noPermission') {}
/** An output file (the metrics file) could not be written. */
export class CannotWriteError extends failureOf('cannotWrite') {}

/** A value that failed validation: names the flag (or config key) and the offending value. */
export function invalidValue(flag: string, value: string, reason: string): UsageError {
  return new UsageError(`invalid value ${JSON.stringify(value)} for ${flag}: ${reason}`);
}
