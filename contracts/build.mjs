// Compiles src/**/*.sol with the pinned solc-js and writes out/<Contract>.json
// ({abi, bytecode}, keys sorted, two-space indent): the artifacts the Rust
// crate embeds, so `cargo build` never needs node. Same sources and same
// package-lock.json give the same bytes.
//
//   node build.mjs [OUT_DIR]      (default: out/)
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const ROOT = path.dirname(fileURLToPath(import.meta.url));
const SOLC_VERSION = "0.8.37";
// Contracts the Rust crate deploys or calls; everything else compiled along
// (interfaces, OpenZeppelin internals) has no artifact.
const ARTIFACTS = {
  "src/DstackKms.sol": ["DstackKms"],
  "src/DstackApp.sol": ["DstackApp"],
  "src/IAppAuth.sol": ["IAppAuth"],
  "src/IAppAuthBasicManagement.sol": ["IAppAuthBasicManagement"],
  "src/testing/DstackKmsV2.sol": ["DstackKmsV2"],
  "src/testing/DstackAppV2.sol": ["DstackAppV2"],
  "@openzeppelin/contracts/proxy/ERC1967/ERC1967Proxy.sol": ["ERC1967Proxy"],
};

function die(msg) {
  console.error(`build.mjs: ${msg}`);
  process.exit(1);
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

function listSol(dir) {
  return fs
    .readdirSync(path.join(ROOT, dir), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listSol(`${dir}/${e.name}`) : e.name.endsWith(".sol") ? [`${dir}/${e.name}`] : []))
    .sort();
}

// Only our own tree and the pinned OpenZeppelin packages are importable: a
// stray import of anything else is an error, not a silent lookup elsewhere.
function findImport(name) {
  let file;
  if (name.startsWith("@openzeppelin/")) file = path.join(ROOT, "node_modules", name);
  else if (name.startsWith("src/")) file = path.join(ROOT, name);
  else return { error: `import outside src/ and @openzeppelin/: ${name}` };
  try {
    return { contents: fs.readFileSync(file, "utf8") };
  } catch (e) {
    return { error: `${name}: ${e.message} (run contracts/build to install the npm packages)` };
  }
}

const outDir = path.resolve(process.argv[2] ?? path.join(ROOT, "out"));
if (solc.version().split("+")[0] !== SOLC_VERSION) {
  die(`solc-js is ${solc.version()}, expected ${SOLC_VERSION}: run npm ci in contracts/`);
}

const sources = {};
for (const f of listSol("src")) sources[f] = { content: fs.readFileSync(path.join(ROOT, f), "utf8") };
// ERC1967Proxy comes in through DstackKms's import, so it is compiled too.

const input = {
  language: "Solidity",
  sources,
  settings: {
    // Cancun: what every chain dstack's KMS is deployed on supports, and what
    // the pinned anvil runs.
    evmVersion: "cancun",
    optimizer: { enabled: true, runs: 200 },
    viaIR: false,
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImport }));
let failed = false;
for (const err of output.errors ?? []) {
  if (err.severity === "error") failed = true;
  console.error(err.formattedMessage.trimEnd());
}
if (failed) die("compilation failed");

fs.mkdirSync(outDir, { recursive: true });
for (const [file, names] of Object.entries(ARTIFACTS)) {
  for (const name of names) {
    const c = output.contracts?.[file]?.[name];
    if (!c) die(`no output for ${file}:${name}`);
    const artifact = sortKeys({ abi: c.abi, bytecode: `0x${c.evm.bytecode.object}` });
    fs.writeFileSync(path.join(outDir, `${name}.json`), `${JSON.stringify(artifact, null, 2)}\n`);
  }
}
console.error(`build.mjs: solc ${solc.version()}: wrote ${Object.values(ARTIFACTS).flat().length} artifacts to ${outDir}`);
