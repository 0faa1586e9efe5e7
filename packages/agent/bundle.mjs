// Bundles the guest agent into one ESM file that Node 22 runs from the guest's read-only disk.
// Usage: node packages/agent/bundle.mjs [outFile]   (default: packages/agent/dist/agent.mjs)
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import { dirname, join, resolve } from "node:path";

const packageDir = dirname(fileURLToPath(import.meta.url));

/**
 * Bundles src/main.ts (TypeScript sources, workspace packages included) into `outFile`.
 * Returns the output path.
 */
export async function bundleAgent(outFile = join(packageDir, "dist", "agent.mjs")) {
  const outPath = resolve(outFile);
  await build({
    entryPoints: [join(packageDir, "src", "main.ts")],
    outfile: outPath,
    bundle: true,
    platform: "node",
    target: "node22",
    format: "esm",
    minify: true,
    sourcemap: false,
    legalComments: "none",
    logLevel: "warning",
    // Workspace packages are consumed from their TypeScript sources, so the bundle never depends on a prior tsc.
    alias: { "@codecourier/protocol": join(packageDir, "..", "protocol", "src", "index.ts") },
    // ESM has no `require`; bundled CommonJS dependencies (if any ever appear) would need one.
    banner: { js: 'import { createRequire as __ccCreateRequire } from "node:module"; const require = __ccCreateRequire(import.meta.url);' },
  });
  return outPath;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const outPath = await bundleAgent(process.argv[2]);
  console.log(`agent bundled to ${outPath}`);
}
