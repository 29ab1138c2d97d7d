// Bundles the CLI into one CommonJS file, then records a V8 code cache so start-up deserialises
// compiled code instead of parsing ~0.3 MB of JavaScript.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const { version } = JSON.parse(await readFile(new URL('./package.json', import.meta.url), 'utf8'));

const { metafile, outputFiles } = await build({
  entryPoints: { cli: 'src/main.ts' },
  metafile: true,
  write: false,
  outdir: 'dist',
  outExtension: { '.js': '.cjs' },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // Lazy import()s become require(): a vm-compiled script has no dynamic-import hook.
  supported: { 'dynamic-import': false },
  // ASCII only (non-ASCII characters escaped), so the shim can read the bundle as latin1.
  charset: 'ascii',
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
  ],
  logLevel: 'warning',
});

// V8 checks a code cache against its source by length only; a cache left from another build could crash
// it. The bundle's first line names its content, and the shim uses a cache only if it names the same bundle
// and the same Node binary (version, V8 build, architecture, size: see bin/redirect-traffic).
const bundle = outputFiles[0].text;
const buildId = createHash('sha256').update(bundle).digest('hex').slice(0, 32);
await mkdir('dist', { recursive: true });
// Written aside and renamed, so a CLI starting meanwhile never reads half a bundle.
await writeFile('dist/cli.cjs.tmp', `// redirect-traffic build ${buildId}\n${bundle}`);
await rename('dist/cli.cjs.tmp', 'dist/cli.cjs');

// The bundle carries other people's code: ship their licences with it (MIT and ISC require the notice).
const packageDirs = new Set(
  Object.keys(metafile.inputs).flatMap((input) => input.match(/^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//)?.[1] ?? []),
);
const notices = [];
for (const dir of [...packageDirs].sort()) {
  const { name, version: packageVersion, license } = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8'));
  const licenceFile = (await readdir(dir)).find((file) => /^(licen[cs]e|copying)/i.test(file));
  const text = licenceFile ? await readFile(join(dir, licenceFile), 'utf8') : `${license} (no licence file shipped)`;
  notices.push(`${name}@${packageVersion} (${license})\n\n${text.trim()}\n`);
}
await writeFile('dist/THIRD-PARTY-LICENSES.txt', notices.join(`\n${'-'.repeat(72)}\n\n`));

// A typical dry run compiles the functions every invocation needs; the shim then saves them.
execFileSync(process.execPath, ['bin/redirect-traffic', '--dry-run', '-proxy-uid=0', '-proxy-inbound-port=20000',
  '-exclude-inbound-port=22', '-exclude-outbound-cidr=198.18.0.0/15', '-exclude-uid=0'], {
  env: { ...process.env, REDIRECT_TRAFFIC_WRITE_CODE_CACHE: '1' },
  stdio: 'ignore',
});
