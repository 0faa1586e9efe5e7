#!/usr/bin/env node
// Set-up shared by `npm start`, `npm test` and `npm run bench`: idempotent, cached, prints progress.
// 1. Debian packages (installed when running as root, else a clear message), 2. npm dependencies,
// 3. TypeScript build + agent bundle, 4. guest images (kernel, initramfs, system disk, base root disk).
// Plain JavaScript with no dependencies: it runs before anything is installed.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const quiet = process.argv.includes("--quiet");
const say = (msg) => quiet || process.stderr.write(`setup: ${msg}\n`);
const die = (msg) => {
  process.stderr.write(`\nsetup failed: ${msg}\n`);
  process.exit(1);
};

/** Debian packages the host needs, with the command each one provides (checked on PATH). */
const DEBIAN_PACKAGES = [
  ["qemu-system-x86", "qemu-system-x86_64"],
  ["qemu-utils", "qemu-img"],
  ["busybox-static", null, "/bin/busybox"],
  ["e2fsprogs", "mkfs.ext4"],
  ["mmdebstrap", "mmdebstrap"],
  ["cpio", "cpio"],
  ["xz-utils", "xz"],
  // gcc and static glibc build the guest's identity helper (packages/agent/native/guest-identity.c).
  ["gcc", "gcc"],
  ["libc6-dev", null, () => staticLibcInstalled()],
  ["linux-image-amd64", null, () => kernelInstalled()],
  // Sandbox networking: a namespace, tap and veth per sandbox (iproute2, nsenter from util-linux), nftables rules.
  ["iproute2", "ip"],
  ["util-linux", "nsenter"],
  ["nftables", "nft"],
  // The network tests' origins serve HTTPS with a throwaway certificate.
  ["openssl", "openssl"],
  // better-sqlite3 (the engine's state) compiles its native addon when no prebuilt binary can be downloaded.
  ["make", "make"],
  ["g++", "g++"],
  ["python3", "python3"],
];

function kernelInstalled() {
  try {
    const boot = execFileSync("ls", ["/boot"]).toString().split("\n");
    return boot.some((f) => f.startsWith("vmlinuz-") && existsSync(join("/lib/modules", f.slice(8), "modules.dep")));
  } catch {
    return false;
  }
}

/** gcc prints an absolute path for libc.a when it can link statically, the bare name when it cannot. */
function staticLibcInstalled() {
  const found = spawnSync("gcc", ["-print-file-name=libc.a"]).stdout?.toString().trim() ?? "";
  return found.startsWith("/") && existsSync(found);
}

// sbin directories too: a non-root PATH often lacks them, yet mkfs.ext4 lives there.
const TOOL_PATH = `${process.env.PATH ?? ""}:/usr/local/sbin:/usr/sbin:/sbin`;
process.env.PATH = TOOL_PATH;

function onPath(cmd) {
  return spawnSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore", env: { ...process.env, PATH: TOOL_PATH } }).status === 0;
}

function isStaticBusybox(path) {
  if (!existsSync(path)) return false;
  const out = spawnSync("file", ["-L", path]).stdout?.toString() ?? "";
  return out === "" || out.includes("statically linked");
}

function missingPackages() {
  return DEBIAN_PACKAGES.filter(([, cmd, check]) => {
    if (cmd) return !onPath(cmd);
    if (typeof check === "function") return !check();
    return !isStaticBusybox(check);
  }).map(([pkg]) => pkg);
}

function run(cmd, args, opts = {}) {
  const result = spawnSync(cmd, args, { stdio: quiet ? ["ignore", "ignore", "inherit"] : "inherit", cwd: root, ...opts });
  if (result.error) die(`${cmd} could not run: ${result.error.message}`);
  return result.status === 0;
}

// 1. Debian packages
const missing = missingPackages();
if (missing.length > 0) {
  if (process.getuid?.() !== 0) {
    die(`missing Debian packages: ${missing.join(" ")}\n  install them as root: sudo apt-get install -y ${missing.join(" ")}`);
  }
  say(`installing Debian packages: ${missing.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  if (!run("apt-get", ["update", "-q"], { env })) die("apt-get update failed");
  if (!run("apt-get", ["install", "-y", "-q", "--no-install-recommends", ...missing], { env })) {
    die(`apt-get install ${missing.join(" ")} failed`);
  }
  const still = missingPackages();
  if (still.length > 0) die(`packages still missing after install: ${still.join(" ")}`);
} else {
  say("Debian packages present");
}

// 2. npm dependencies, reinstalled when the lockfile changes
const stateDir = join(root, "node_modules", ".codecourier-setup");
const lockHash = createHash("sha256").update(readFileSync(join(root, "package-lock.json"))).digest("hex");
const lockStamp = join(stateDir, "lock.sha256");
if (!existsSync(lockStamp) || readFileSync(lockStamp, "utf8") !== lockHash) {
  say("installing npm dependencies (npm ci)");
  if (!run("npm", ["ci", "--no-audit", "--no-fund"])) die("npm ci failed; check network access to the npm registry");
  mkdirSync(stateDir, { recursive: true });
  writeFileSync(lockStamp, lockHash);
} else {
  say("npm dependencies present");
}

// 3. TypeScript build (incremental) and the guest agent bundle
say("building TypeScript");
if (!run("npx", ["tsc", "-b"])) die("TypeScript build failed");
if (!run("node", ["packages/agent/bundle.mjs"])) die("bundling the guest agent failed");

// 4. Guest images (cached by recipe under $CODECOURIER_HOME/images)
say("guest images");
if (!run("node", ["packages/engine/dist/images/build-main.js"])) die("guest image build failed (see above)");
say("ready");
