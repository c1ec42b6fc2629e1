#!/usr/bin/env node
// Builds a Cairn behavior written in JavaScript into a WebAssembly component.
//
//     node guest-sdk/js/build.mjs examples/js/bank-account/bank_account.js \
//         -o target/wasm/js/bank-account.wasm
//
// The module must `export default defineEntity({...})` (guest-sdk/js/src).
// The component exports `cairn:entity/behavior@0.1.0` (wit/entity.wit) and
// imports nothing but the entity types: componentize-js runs with every
// WASI feature of its engine disabled (`stdio random clocks http
// fetch-event`), so StarlingMonkey's own WASI calls are not linked in.
//
// Steps: rolldown bundles a generated entry (the SDK's WIT glue + the
// behavior and whatever it imports) into one ES module; componentize-js
// (SpiderMonkey, snapshotted with wizer at build time) turns it into a
// component. The tools are pinned by tools/package.json and its lock file
// (integrity hashes) and installed on first use with `npm ci` into
// <repo>/target/js-tools (or $CAIRN_JS_TOOLS); later builds need no network.
// A component is rebuilt only when an input changed (the behavior's
// directory, the SDK, the WIT, the lock): the digest is kept in
// `<output>.inputs`.
//
// Options: -o/--output FILE, --force, --install-only, -q/--quiet.
// Node 18 or later; no dependency outside the pinned tools.

import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import {
  existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync,
  statSync, writeFileSync, cpSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const SDK_DIR = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(SDK_DIR, '..', '..');
const TOOLS_SRC = join(SDK_DIR, 'tools');
const WIT_DIR = join(REPO, 'wit');
const WORLD = 'entity';
/** StarlingMonkey features turned off with --no-console: with all of them off the engine imports no WASI. */
const DISABLED_FEATURES = ['stdio', 'random', 'clocks', 'http', 'fetch-event'];
/** The default (--console): stdio stays on, so console output reaches the node's log (wasi:cli/stdout, stderr). */
const DISABLED_FEATURES_CONSOLE = ['random', 'clocks', 'http', 'fetch-event'];

class BuildError extends Error {}

function log(quiet, msg) {
  if (!quiet) process.stderr.write(`${msg}\n`);
}

function sha256(...parts) {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** The digest of the lock: names the install, so a changed lock reinstalls. */
function lockDigest() {
  return sha256(
    readFileSync(join(TOOLS_SRC, 'package.json')),
    '\0',
    readFileSync(join(TOOLS_SRC, 'package-lock.json')),
  );
}

export function toolsDir() {
  const base = process.env.CAIRN_JS_TOOLS
    ? resolve(process.env.CAIRN_JS_TOOLS)
    : join(REPO, 'target', 'js-tools');
  const lock = JSON.parse(readFileSync(join(TOOLS_SRC, 'package-lock.json'), 'utf8'));
  const v = lock.packages?.['node_modules/@bytecodealliance/componentize-js']?.version ?? 'unknown';
  return join(base, `componentize-js-${v}`);
}

/** Installs the pinned tools with `npm ci` unless the same lock is installed; returns the directory. */
export function installTools(quiet = false) {
  const dest = toolsDir();
  const digest = lockDigest();
  const stamp = join(dest, '.cairn-lock-sha256');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === digest) return dest;
  mkdirSync(dirname(dest), { recursive: true });
  const started = Date.now();
  log(quiet, `installing the pinned componentize-js tools into ${dest} (npm ci)`);
  const staging = mkdtempSync(join(dirname(dest), '.install-'));
  // Per-install names, so that builds installing at once do not share them.
  const aside = `${staging}.old`;
  const cache = `${staging}.npm-cache`;
  try {
    for (const f of ['package.json', 'package-lock.json']) cpSync(join(TOOLS_SRC, f), join(staging, f));
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const r = spawnSync(
      npm,
      ['ci', '--no-audit', '--no-fund', '--loglevel=error', '--cache', cache],
      { cwd: staging, stdio: ['ignore', quiet ? 'ignore' : 'inherit', 'inherit'] },
    );
    if (r.error) throw new BuildError(`cannot run npm (Node 20 with npm is needed): ${r.error.message}`);
    if (r.status !== 0) throw new BuildError(`npm ci in ${staging} failed (exit ${r.status})`);
    writeFileSync(join(staging, '.cairn-lock-sha256'), `${digest}\n`);
    // Another build may have finished the same install meanwhile and may be
    // running it: a complete install of this lock is never replaced (ours is
    // dropped below). An install of another lock is moved aside first, so
    // `dest` is always either absent or whole.
    if (!(existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === digest)) {
      if (existsSync(dest)) renameSync(dest, aside);
      try {
        renameSync(staging, dest);
      } catch (e) {
        if (!(existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === digest)) throw e;
      }
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
    rmSync(aside, { recursive: true, force: true });
    // npm's download cache (about 130 MB) is only worth a reinstall after a
    // lock change, which is rare: do not keep it.
    rmSync(cache, { recursive: true, force: true });
  }
  log(quiet, `installed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return dest;
}

/** The .js/.mjs/.json files of a directory, recursively, sorted (no node_modules, no dot dirs). */
function sourceFiles(dir) {
  const out = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (e.name.startsWith('.') || e.name === 'node_modules') continue;
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (/\.(m?js|json|wit)$/.test(e.name)) out.push(p);
    }
  };
  walk(dir);
  return out;
}

/** A digest of everything the component is built from. */
export function inputsDigest(module, keepConsole = true) {
  const h = createHash('sha256');
  h.update(`componentize-js ${lockDigest()}\nmodule ${basename(module)}\nconsole ${keepConsole}\n`);
  h.update(readFileSync(fileURLToPath(import.meta.url)));
  for (const d of [WIT_DIR, join(SDK_DIR, 'src'), dirname(module)]) {
    for (const p of sourceFiles(d)) {
      h.update(`${relative(d, p)}\0`);
      h.update(readFileSync(p));
      h.update('\0');
    }
  }
  return h.digest('hex');
}

/** Builds `module` into `output`; returns false when it was up to date. */
export async function build(module, output, { force = false, quiet = false, console: keepConsole = true } = {}) {
  module = resolve(module);
  output = resolve(output);
  if (!/\.m?js$/.test(module) || !existsSync(module) || !statSync(module).isFile()) {
    throw new BuildError(`${module} is not a JavaScript file`);
  }
  const digest = inputsDigest(module, keepConsole);
  const stamp = `${output}.inputs`;
  if (!force && existsSync(output) && existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === digest) {
    log(quiet, `${output} is up to date`);
    return false;
  }
  const tools = installTools(quiet);
  mkdirSync(dirname(output), { recursive: true });
  const started = Date.now();
  const tmp = mkdtempSync(join(tmpdir(), 'cairn-jsbuild-'));
  try {
    // 1. One ES module: the SDK's WIT glue exporting `behavior` for the behavior.
    const entry = join(tmp, 'entry.js');
    const url = (p) => JSON.stringify(pathToFileURL(p).href);
    writeFileSync(
      entry,
      `// Generated by guest-sdk/js/build.mjs: exports ${basename(module)}.\n` +
        `import ${url(join(SDK_DIR, 'src', keepConsole ? 'guest-globals-console.js' : 'guest-globals.js'))};\n` +
        `import { behaviorExports } from ${url(join(SDK_DIR, 'src', 'component.js'))};\n` +
        `import entity from ${url(module)};\n` +
        'export const behavior = behaviorExports(entity);\n',
    );
    const { rolldown } = await import(pathToFileURL(join(tools, 'node_modules', 'rolldown', 'dist', 'index.mjs')).href);
    const bundle = await rolldown({ input: entry, platform: 'neutral', logLevel: 'warn', treeshake: true });
    const app = join(tmp, 'app');
    mkdirSync(app);
    await bundle.write({ dir: app, format: 'esm', entryFileNames: 'behavior.js', codeSplitting: false });
    await bundle.close();
    // 2. The component.
    const { componentize } = await import(
      pathToFileURL(join(tools, 'node_modules', '@bytecodealliance', 'componentize-js', 'src', 'componentize.js')).href
    );
    const cwd = process.cwd();
    let component;
    try {
      // componentize-js reads the WIT through a WASI shim that sees the cwd,
      // and maps the cwd (holding the source) as `/` for the snapshot.
      cpSync(WIT_DIR, join(tmp, 'wit'), { recursive: true });
      process.chdir(tmp);
      ({ component } = await componentize({
        sourcePath: join(app, 'behavior.js'),
        witPath: 'wit',
        worldName: WORLD,
        disableFeatures: keepConsole ? DISABLED_FEATURES_CONSOLE : DISABLED_FEATURES,
      }));
    } catch (e) {
      throw new BuildError(`componentize-js failed to build ${module}:\n${e?.stack ?? e}`);
    } finally {
      process.chdir(cwd);
    }
    const partial = join(dirname(output), `.${basename(output)}.${process.pid}.partial`);
    writeFileSync(partial, component);
    renameSync(partial, output);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  writeFileSync(stamp, `${digest}\n`);
  const size = statSync(output).size / 1e6;
  log(quiet, `built ${output} (${size.toFixed(1)} MB) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return true;
}

function usage() {
  return 'usage: node guest-sdk/js/build.mjs <behavior.js> [-o <out.wasm>] [--no-console] [--force] [-q] | --install-only';
}

async function main(argv) {
  let module;
  let output;
  let force = false;
  let quiet = false;
  let installOnly = false;
  let keepConsole = true;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-o' || a === '--output') output = argv[++i];
    else if (a === '--force') force = true;
    else if (a === '--console') keepConsole = true;
    else if (a === '--no-console') keepConsole = false;
    else if (a === '-q' || a === '--quiet') quiet = true;
    else if (a === '--install-only') installOnly = true;
    else if (a === '-h' || a === '--help') {
      console.log(usage());
      return 0;
    } else if (a.startsWith('-') || module) {
      console.error(`build.mjs: unexpected argument ${a}\n${usage()}`);
      return 2;
    } else module = a;
  }
  try {
    if (installOnly) {
      console.log(installTools(quiet));
      return 0;
    }
    if (!module) {
      console.error(`build.mjs: the behavior's module is required\n${usage()}`);
      return 2;
    }
    await build(module, output ?? module.replace(/\.m?js$/, '.wasm'), { force, quiet, console: keepConsole });
  } catch (e) {
    console.error(`build.mjs: ${e instanceof BuildError ? e.message : e?.stack ?? e}`);
    return 1;
  }
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
