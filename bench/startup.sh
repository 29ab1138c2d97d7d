#!/usr/bin/env bash
# Dry-run start-up on each pinned Node version, against `node -e 0`, with hyperfine (apt-get install hyperfine).
# Variants, each in its own copy of bin/ and dist/ under a scratch directory:
#   code-cache     bin/redirect-traffic as shipped, with a V8 code cache made by that same Node version
#   compile-cache  a shim calling module.enableCompileCache(<dir>) then require('../dist/cli.cjs'), cache warm
#   no-cache       bin/redirect-traffic with no cache file (what a Node version other than the build's gets)
# Rounds interleave versions and variants (hyperfine runs each command --runs times per round); the printed
# figures are medians over all rounds. Children get PATH only (an inherited NODE_EXTRA_CA_CERTS costs ~50 ms).
# As root it then times a typical apply (code-cache variant) on each version, in a scratch network namespace
# (rt-bench-startup-<pid>, deleted at exit), against that version's floor: `node -e 0` + iptables-save +
# iptables-restore for iptables, `node -e 0` + `nft -f` for nftables; rounds interleave versions and backends.
# Usage: npm run build && bench/startup.sh [rounds] [runs-per-round]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
RUNS=${2:-5}
ROOT=$PWD
WORK=$(mktemp -d /tmp/rt-startup-XXXXXX)
NAMESPACE=rt-bench-startup-$$
trap 'rm -rf "$WORK"; [ ! -e "/var/run/netns/$NAMESPACE" ] || ip netns delete "$NAMESPACE"' EXIT
FLAGS="--dry-run -proxy-uid=999 -proxy-inbound-port=20000 -exclude-uid=998 -exclude-inbound-port=22 -exclude-outbound-cidr=169.254.169.254 -consul-dns-port=8600"
# The same warm-up dry run build.mjs records its code cache with.
WARM="--dry-run -proxy-uid=0 -proxy-inbound-port=20000 -exclude-inbound-port=22 -exclude-outbound-cidr=198.18.0.0/15 -exclude-uid=0"

declare -A NODE=([20]="$(command -v node)" [22]="$ROOT/node_modules/node22/bin/node" [24]="$ROOT/node_modules/node24/bin/node")
VERSIONS=(20 22 24)
for v in "${VERSIONS[@]}"; do
  mkdir -p "$WORK/$v/path"
  ln -s "${NODE[$v]}" "$WORK/$v/path/node"
  for variant in code-cache compile-cache no-cache; do
    mkdir -p "$WORK/$v/$variant"
    cp -a bin dist "$WORK/$v/$variant/"
    rm -f "$WORK/$v/$variant/dist/cli.cjs.cache"
  done
  env -i PATH="$WORK/$v/path:/usr/bin:/bin" REDIRECT_TRAFFIC_WRITE_CODE_CACHE=1 "$WORK/$v/code-cache/bin/redirect-traffic" $WARM >/dev/null
  cat >"$WORK/$v/compile-cache/bin/redirect-traffic" <<'SHIM'
#!/usr/bin/env node
'use strict';
require('node:module').enableCompileCache?.(require('node:path').join(__dirname, '..', 'compile-cache'));
require('../dist/cli.cjs');
SHIM
  env -i PATH="$WORK/$v/path:/usr/bin:/bin" "$WORK/$v/compile-cache/bin/redirect-traffic" $WARM >/dev/null
  echo "Node $v: $("${NODE[$v]}" --version)" >&2
done

# 1. hyperfine: wall time, each command --runs times per round, rounds interleaved.
for round in $(seq "$ROUNDS"); do
  for v in "${VERSIONS[@]}"; do
    env -i PATH="$WORK/$v/path:/usr/bin:/bin" hyperfine -N --style none --warmup 2 --runs "$RUNS" \
      --export-json "$WORK/$v-$round.json" \
      -n node-e-0 'node -e 0' \
      -n code-cache "$WORK/$v/code-cache/bin/redirect-traffic $FLAGS" \
      -n compile-cache "$WORK/$v/compile-cache/bin/redirect-traffic $FLAGS" \
      -n no-cache "$WORK/$v/no-cache/bin/redirect-traffic $FLAGS" >/dev/null 2>&1
  done
done

# 2. CPU time (user + system, from wait4) of single runs interleaved one by one: on a busy machine wall
# time mostly measures the other load, CPU time much less.
python3 - "$WORK" "$((ROUNDS * RUNS))" "$FLAGS" "${VERSIONS[@]}" >"$WORK/cpu.json" <<'CPU'
import json, os, sys, time
work, n, flags, versions = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
cmds = {}
for v in versions:
    env = {'PATH': f'{work}/{v}/path:/usr/bin:/bin'}
    cmds[(v, 'node-e-0')] = (f'{work}/{v}/path/node', ['node', '-e', '0'], env)
    for variant in ('code-cache', 'compile-cache', 'no-cache'):
        shim = f'{work}/{v}/{variant}/bin/redirect-traffic'
        cmds[(v, variant)] = (shim, [shim, *flags], env)
cpu = {f'{v}/{k}': [] for (v, k) in cmds}
devnull = os.open(os.devnull, os.O_WRONLY)
for i in range(n + 2):
    for (v, k), (path, argv, env) in cmds.items():
        pid = os.posix_spawn(path, argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)])
        _, status, ru = os.wait4(pid, 0)
        if status != 0: sys.exit(f'{argv} failed: {status}')
        if i >= 2: cpu[f'{v}/{k}'].append(ru.ru_utime + ru.ru_stime)
json.dump(cpu, sys.stdout)
CPU

node - "$WORK" "$ROUNDS" "${VERSIONS[@]}" <<'REPORT'
const { readFileSync } = require('node:fs');
const [work, rounds, ...versions] = process.argv.slice(2);
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const cpu = JSON.parse(readFileSync(`${work}/cpu.json`, 'utf8'));
const f = (x) => `${(x * 1000).toFixed(1)}`;
console.log('wall: hyperfine medians (min) in ms; cpu: user+system medians in ms');
console.log('| Node | `node -e 0` wall | code cache wall | compile cache wall | no cache wall | `node -e 0` cpu | code cache cpu | compile cache cpu | no cache cpu | code cache / `node -e 0` (wall, cpu) | compile cache / `node -e 0` (wall, cpu) |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const v of versions) {
  const times = {};
  for (let r = 1; r <= Number(rounds); r++) {
    for (const result of JSON.parse(readFileSync(`${work}/${v}-${r}.json`, 'utf8')).results) {
      (times[result.command] ??= []).push(...result.times);
    }
  }
  const wall = (k) => median(times[k]);
  const c = (k) => median(cpu[`${v}/${k}`]);
  const w = (k) => `${f(wall(k))} (${f(Math.min(...times[k]))})`;
  const kinds = ['node-e-0', 'code-cache', 'compile-cache', 'no-cache'];
  console.log(`| ${v} | ${kinds.map(w).join(' | ')} | ${kinds.map((k) => f(c(k))).join(' | ')} | ` +
    `${(wall('code-cache') / wall('node-e-0')).toFixed(2)}x, ${(c('code-cache') / c('node-e-0')).toFixed(2)}x | ` +
    `${(wall('compile-cache') / wall('node-e-0')).toFixed(2)}x, ${(c('compile-cache') / c('node-e-0')).toFixed(2)}x |`);
}
console.log(`medians over ${rounds} interleaved rounds; load average ${require('node:os').loadavg().map((x) => x.toFixed(1)).join(' ')}`);
REPORT

# 3. Apply (root only): redirect-traffic's typical apply against its floor, on a namespace emptied before each run.
if [ "$(id -u)" != 0 ]; then
  echo 'apply start-up not measured: it needs root (a scratch network namespace)'
  exit 0
fi
ip netns add "$NAMESPACE"
python3 - "$WORK" "$((ROUNDS * RUNS))" "$NAMESPACE" "$FLAGS" "${VERSIONS[@]}" <<'APPLY'
import statistics, subprocess, sys, time
work, n, namespace, flags, versions = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(), sys.argv[5:]
netns = f'/var/run/netns/{namespace}'
apply_flags = [f for f in flags if f != '--dry-run'] + ['-netns', netns]
inside = lambda *argv: ['nsenter', f'--net={netns}', '--', *argv]
def run(argv, env, stdin=None):
    result = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True)
    if result.returncode != 0: sys.exit(f'{argv} failed: {result.stderr}')
    return result.stdout
def timed(argv, env, stdin=None):
    start = time.perf_counter(); run(argv, env, stdin); return (time.perf_counter() - start) * 1000
def reset(env):
    run(inside('iptables', '-t', 'nat', '-F'), env); run(inside('iptables', '-t', 'nat', '-X'), env)
    run(inside('nft', 'add table inet consul_tproxy; delete table inet consul_tproxy'), env)
cells = {}
for i in range(n + 1):
    for backend in ('iptables', 'nftables'):
        for v in versions:
            env = {'PATH': f'{work}/{v}/path:/usr/sbin:/usr/bin:/sbin:/bin'}
            shim = f'{work}/{v}/code-cache/bin/redirect-traffic'
            argv = [shim, f'-backend={backend}', *apply_flags]
            transaction = run([shim, '--dry-run', f'-backend={backend}', *flags], env)
            reset(env)
            node = timed(['node', '-e', '0'], env)
            if backend == 'iptables':
                floor = node + timed(inside('iptables-save', '-t', 'nat'), env) + timed(inside('iptables-restore', '--noflush'), env, transaction)
            else:
                floor = node + timed(inside('nft', '-f', '-'), env, transaction)
            reset(env)
            apply = timed(argv, env)
            if i > 0:  # the first round warms up
                cells.setdefault((backend, v), []).append((node, floor, apply, apply / floor))
print('\napply: medians in ms over interleaved runs; ratio: median of apply / floor within each run')
print('| backend | Node | `node -e 0` | floor | apply | apply / floor |')
print('|---|---|---:|---:|---:|---:|')
for (backend, v), rows in cells.items():
    med = lambda k: statistics.median(row[k] for row in rows)
    print(f'| {backend} | {v} | {med(0):.1f} | {med(1):.1f} | {med(2):.1f} | {med(3):.2f}x |')
APPLY
