// Runs the official dstack JS SDK (@phala/dstack-sdk) for crates/envcrypt's
// tests, loaded through its package exports from the node_modules that
// tests/sdk/install made (directory in DSTACK_OFFICIAL_SDK_JS).
//
//   driver.cjs version   the installed @phala/dstack-sdk version
//   driver.cjs encrypt   stdin {"public_key": hex, "env": [{"key", "value"}]};
//                        prints encryptEnvVars output (hex)
//   driver.cjs verify    stdin {"public_key", "signature_v1", "signature",
//                        "app_id": hex, "timestamp": int}; prints
//                        {"v1": signer or null, "legacy": signer or null}
'use strict';
const path = require('node:path');
const { createRequire } = require('node:module');

const dir = process.env.DSTACK_OFFICIAL_SDK_JS;
if (!dir) throw new Error('DSTACK_OFFICIAL_SDK_JS is not set');
const sdk = createRequire(path.join(dir, 'package.json'));

function stdin() {
  return JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
}

async function main() {
  const command = process.argv[2];
  if (command === 'version') {
    // package.json is not among the package's exports: read it by path.
    const file = path.join(dir, 'node_modules', '@phala', 'dstack-sdk', 'package.json');
    console.log(JSON.parse(require('node:fs').readFileSync(file, 'utf8')).version);
  } else if (command === 'encrypt') {
    const { encryptEnvVars } = sdk('@phala/dstack-sdk/encrypt-env-vars');
    const request = stdin();
    console.log(await encryptEnvVars(request.env, request.public_key));
  } else if (command === 'verify') {
    const { verifyEnvEncryptPublicKey, verifyEnvEncryptPublicKeyLegacy } = sdk(
      '@phala/dstack-sdk/verify-env-encrypt-public-key',
    );
    const request = stdin();
    const publicKey = Buffer.from(request.public_key, 'hex');
    const v1 = verifyEnvEncryptPublicKey(
      publicKey,
      Buffer.from(request.signature_v1, 'hex'),
      request.app_id,
      request.timestamp,
    );
    const legacy = verifyEnvEncryptPublicKeyLegacy(
      publicKey,
      Buffer.from(request.signature, 'hex'),
      request.app_id,
    );
    console.log(JSON.stringify({ v1, legacy }));
  } else {
    throw new Error(`unknown command ${command}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
