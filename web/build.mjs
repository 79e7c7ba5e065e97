// Builds the terminal page into dist/: index.html, app.js and app.css
// (app.css is xterm's stylesheet plus ours, pulled in by imports in
// src/main.js). Run with `npm run build` after `npm ci`.
import { build } from 'esbuild';
import { copyFile, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const src = path.join(here, 'src');
const dist = path.join(here, 'dist');

// Empty dist/ but keep the committed .gitkeep that lets go:embed work on a
// clean clone.
await mkdir(dist, { recursive: true });
for (const name of await readdir(dist)) {
  if (name !== '.gitkeep') {
    await rm(path.join(dist, name), { recursive: true, force: true });
  }
}

const result = await build({
  entryPoints: { app: path.join(src, 'main.js') },
  outdir: dist,
  bundle: true,
  minify: true,
  format: 'iife',
  platform: 'browser',
  target: ['es2020', 'chrome90', 'firefox90', 'safari15'],
  // sockjs-client still refers to Node's `global`.
  define: { global: 'globalThis', 'process.env.NODE_ENV': '"production"' },
  legalComments: 'none',
  logLevel: 'warning',
  metafile: true,
});

await copyFile(path.join(src, 'index.html'), path.join(dist, 'index.html'));

for (const [file, { bytes }] of Object.entries(result.metafile.outputs)) {
  console.log(`${path.relative(here, file)}\t${(bytes / 1024).toFixed(1)} KiB`);
}
console.log('dist/index.html');
