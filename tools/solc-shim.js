#!/usr/bin/env node
// Offline stand-in for a native solc binary, backed by solc-js (the official
// compiler built to WebAssembly). It answers the two calls py-solc-x,
// ape-solidity and forge make: `--version` and `--standard-json`.
//
// Output is written with fs.writeSync and the process is left to end on its
// own: process.exit() while stdout is a pipe truncates anything over 64 KiB.
'use strict';
const fs = require('fs');
const path = require('path');

const args = process.argv.slice(2);
const solcDir = path.dirname(require.resolve('solc/package.json'));
const versionCache = path.join(__dirname, '.solc-version-cache');

function loadSolc() {
  return require('solc');
}

function fullVersion() {
  // Loading the wasm costs ~0.4 s; py-solc-x asks for --version often.
  const stamp = fs.statSync(path.join(solcDir, 'soljson.js')).mtimeMs.toString();
  try {
    const [cachedStamp, cachedVersion] = fs.readFileSync(versionCache, 'utf8').split('\n');
    if (cachedStamp === stamp && cachedVersion) return cachedVersion;
  } catch (_) { /* no cache yet */ }
  const v = loadSolc().version();
  try { fs.writeFileSync(versionCache, `${stamp}\n${v}`); } catch (_) { /* read-only is fine */ }
  return v;
}

function optionValues(name) {
  const out = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === name && i + 1 < args.length) out.push(args[++i]);
    else if (args[i].startsWith(name + '=')) out.push(args[i].slice(name.length + 1));
  }
  return out;
}

function writeOut(text) {
  const buf = Buffer.from(text);
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(1, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
}

if (args.includes('--version') || args.includes('-v')) {
  writeOut(`solc, the solidity compiler commandline interface\nVersion: ${fullVersion()}\n`);
} else if (args.includes('--standard-json')) {
  const basePath = optionValues('--base-path')[0] || process.cwd();
  const includePaths = optionValues('--include-path');
  const allowPaths = optionValues('--allow-paths')
    .flatMap((p) => p.split(','))
    .filter(Boolean)
    .map((p) => path.resolve(p));
  const roots = [basePath, ...includePaths].map((p) => path.resolve(p));
  const allowed = [...roots, ...allowPaths];

  const isAllowed = (file) => allowed.some((dir) => file === dir || file.startsWith(dir + path.sep));

  const findImports = (importPath) => {
    const candidates = path.isAbsolute(importPath)
      ? [importPath]
      : roots.map((root) => path.join(root, importPath));
    for (const file of candidates) {
      const resolved = path.resolve(file);
      if (!isAllowed(resolved)) continue;
      if (fs.existsSync(resolved) && fs.statSync(resolved).isFile()) {
        return { contents: fs.readFileSync(resolved, 'utf8') };
      }
    }
    return { error: `File not found inside the allowed paths: ${importPath}` };
  };

  const input = fs.readFileSync(0, 'utf8');
  const output = loadSolc().compile(input, { import: findImports });
  writeOut(output);
} else {
  process.stderr.write('solc-shim: only --version and --standard-json are supported\n');
  process.exitCode = 1;
}
