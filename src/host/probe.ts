import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { delimiter } from 'node:path';
import { PermissionError, SystemCommandError } from '../errors.ts';
import type { ProbePlan, ProbeReport } from '../core/verification.ts';
import { namespaceEntry } from './runner.ts';
import { PROBE_SOURCE } from './probeScript.ts';

/** What a probe run came to: the observations, or why there are none (it ran out of time). */
export type ProbeOutcome = { report: ProbeReport } | { incomplete: string };

/**
 * Runs the probe (src/host/probeScript.ts) with this Node binary: its listener half and its client half,
 * started at once so their start-ups overlap, both inside the namespace (nsenter --net) with -netns. Both
 * start as root; the client drops to the plan's UID itself. Everything is killed after plan.killAfterMs.
 *
 * The relay: the probe's first line (the client's plan) goes to the client's stdin, left open; the client's
 * first line (what it saw) goes to the probe's stdin; the probe's second line is the report. Then the client's
 * stdin is closed: a connection it holds open for the probe to find is reset, and it exits.
 */
export async function runProbe(netns: string | undefined, plan: ProbePlan): Promise<ProbeOutcome> {
  const inNamespace = namespaceEntry(netns);
  const { spawn } = await import('node:child_process');
  const children: ChildProcessWithoutNullStreams[] = [];
  const start = (args: string[]) => {
    const [file, rest] = inNamespace(process.execPath, ['-e', PROBE_SOURCE, '--', ...args]);
    // A minimal environment: the probe never sees CONSUL_HTTP_TOKEN or anything else of ours.
    const child = spawn(file, rest, { env: { PATH: process.env['PATH'] ?? `/usr/sbin${delimiter}/usr/bin`, LC_ALL: 'C' } });
    child.stdin.on('error', () => undefined);
    children.push(child);
    return child;
  };
  const killAll = () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  return new Promise<ProbeOutcome>((resolve, reject) => {
    let settled = false;
    const finish = (outcome: ProbeOutcome | Error) => {
      if (settled) return;
      settled = true;
      const end = () => {
        clearTimeout(timer);
        killAll();
        if (outcome instanceof Error) reject(outcome);
        else resolve(outcome);
      };
      // With a report, let the client reset what it holds (it exits at once); the kill timer still bounds this.
      if (outcome instanceof Error || !('report' in outcome) || client.exitCode !== null || client.signalCode !== null) return end();
      client.once('close', end);
      client.stdin.end();
    };
    const timer = setTimeout(
      () => finish({ incomplete: `the probe did not finish within ${(plan.killAfterMs / 1000).toFixed(1)} s and was stopped` }),
      plan.killAfterMs,
    );
    const failed = (why: string) => {
      const message = `the verify probe failed: ${why}`;
      finish(/EPERM|EACCES/.test(why) ? new PermissionError(message) : new SystemCommandError(message));
    };
    const probe = start(['probe', JSON.stringify(plan)]);
    const client = start(['client']);
    for (const child of [probe, client]) {
      child.on('error', (error) => failed(`could not run ${child.spawnfile}: ${(error as NodeJS.ErrnoException).code ?? error.message}`));
    }
    const stderrOf = (child: ChildProcessWithoutNullStreams) => {
      let text = '';
      child.stderr.on('data', (chunk) => (text += chunk));
      return () => text.trim().split('\n').pop() ?? '';
    };
    const probeStderr = stderrOf(probe);
    const clientStderr = stderrOf(client);
    // The probe's lines: first the client's plan, then the report.
    let buffered = '';
    let lines = 0;
    probe.stdout.setEncoding('utf8');
    probe.stdout.on('data', (chunk: string) => {
      buffered += chunk;
      for (let end = buffered.indexOf('\n'); end >= 0; end = buffered.indexOf('\n')) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        let message: { client?: unknown; error?: string } & ProbeReport;
        try {
          message = JSON.parse(line);
        } catch {
          return failed(`unexpected output: ${line.slice(0, 200)}`);
        }
        if (message.error !== undefined) {
          return /did not finish/.test(message.error) ? finish({ incomplete: message.error }) : failed(message.error);
        }
        lines += 1;
        if (lines === 1) client.stdin.write(`${JSON.stringify(message.client)}\n`);
        else return finish({ report: message });
      }
    });
    probe.on('close', (code, signal) => {
      if (!settled) failed(probeStderr() || `the probe exited with ${signal ?? `status ${code}`} without a report`);
    });
    // The client's one line goes to the probe as soon as it is complete (the client may still be holding a
    // connection open); a client that ends without one is reported as failed.
    let clientOut = '';
    let relayed = false;
    const relay = (line: string) => {
      if (relayed) return;
      relayed = true;
      probe.stdin.end(`${line}\n`);
    };
    client.stdout.setEncoding('utf8');
    client.stdout.on('data', (chunk: string) => {
      clientOut += chunk;
      const end = clientOut.indexOf('\n');
      if (end >= 0) relay(clientOut.slice(0, end));
    });
    client.on('close', (code, signal) => {
      const line = clientOut.trim().split('\n').pop() ?? '';
      relay(line !== '' ? line : JSON.stringify({ error: `the client failed: ${clientStderr() || (signal ?? `status ${code}`)}` }));
    });
  });
}
