// Bundles the CLI into one CommonJS file plus a lazily loaded one for execa, then records a V8 code
// cache so start-up deserialises compiled code instead of parsing ~0.5 MB of JavaScript.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';

const { version } = JSON.parse(await readFile(new URL('./package.json', import.meta.url), 'utf8'));

await build({
  entryPoints: { cli: 'src/main.ts', exec: 'src/host/exec.ts' },
  outdir: 'dist',
  outExtension: { '.js': '.cjs' },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // import() of the exec bundle becomes require(): a vm-compiled script has no dynamic-import hook.
  supported: { 'dynamic-import': false },
  minifyWhitespace: true,
  minifySyntax: true,
  legalComments: 'eof',
  define: { __VERSION__: JSON.stringify(version) },
  plugins: [
    {
      // commander loads node:child_process (and with it node:net) only to run executable subcommands,
      // which this CLI never has: give it a stand-in that loads the real module on first use.
      name: 'lazy-child-process-for-commander',
      setup(builder) {
        builder.onResolve({ filter: /^node:child_process$/ }, (args) =>
          args.importer.includes('node_modules/commander/') ? { path: 'lazy-child-process', namespace: 'lazy' } : undefined,
        );
        builder.onLoad({ filter: /.*/, namespace: 'lazy' }, () => ({
          contents: "module.exports = { spawn: (...args) => require('node:child_process').spawn(...args) };",
          loader: 'js',
        }));
      },
    },
    {
      name: 'lazy-exec-bundle',
      setup(builder) {
        builder.onResolve({ filter: /\/exec\.ts$/ }, (args) =>
          args.kind === 'dynamic-import' ? { path: './exec.cjs', external: true } : undefined,
        );
      },
    },
  ],
  logLevel: 'warning',
});

// A typical dry run compiles the functions every invocation needs; the shim then saves them.
execFileSync(process.execPath, ['bin/redirect-traffic', '--dry-run', '-proxy-uid=0', '-proxy-inbound-port=20000',
  '-exclude-inbound-port=22', '-exclude-outbound-cidr=198.18.0.0/15', '-exclude-uid=0'], {
  env: { ...process.env, REDIRECT_TRAFFIC_WRITE_CODE_CACHE: '1' },
  stdio: 'ignore',
});
