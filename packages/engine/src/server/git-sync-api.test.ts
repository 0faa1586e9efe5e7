// sandbox.git and sandbox.files.sync against a real server with a real VM (one sandbox for the file): git with
// local and smart-HTTP remotes (Basic auth served in the guest), typed errors, credentials kept out of config and
// messages; sync up and down with nested trees, odd names, deletes, modes, symlinks and mtimes.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Sandbox } from "@codecourier/sdk";
import { startLocalServer, type LocalServer } from "../testing/local-server.js";

/** The guest's own Node (the agent's), which serves git over HTTP inside the sandbox for the credential checks. */
const GUEST_NODE = "/.codecourier/bin/node";
const GIT_HTTP_PORT = 8417;
/**
 * A smart-HTTP git server for the guest: `git http-backend` as CGI behind Basic auth. Args: project root, user,
 * password, port.
 */
const GIT_HTTP_SERVER = `
const http = require("node:http");
const { spawn } = require("node:child_process");
const [root, user, password, port] = process.argv.slice(1);
const expected = "Basic " + Buffer.from(user + ":" + password).toString("base64");
http.createServer((request, response) => {
  if (request.headers.authorization !== expected) return response.writeHead(401, { "www-authenticate": 'Basic realm="git"' }).end();
  const url = new URL(request.url, "http://x");
  const cgi = spawn("git", ["http-backend"], { env: { ...process.env, GIT_PROJECT_ROOT: root, GIT_HTTP_EXPORT_ALL: "1", REMOTE_USER: user,
    REQUEST_METHOD: request.method, PATH_INFO: decodeURIComponent(url.pathname), QUERY_STRING: url.search.slice(1),
    CONTENT_TYPE: request.headers["content-type"] || "" } });
  cgi.stdin.on("error", () => {});
  request.pipe(cgi.stdin);
  let head = Buffer.alloc(0), done = false;
  cgi.stdout.on("data", (chunk) => {
    if (done) return void response.write(chunk);
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf("\\r\\n\\r\\n");
    if (end === -1) return;
    done = true;
    let status = 200;
    for (const line of head.subarray(0, end).toString().split("\\r\\n")) {
      const colon = line.indexOf(":"), name = line.slice(0, colon).trim(), value = line.slice(colon + 1).trim();
      if (name.toLowerCase() === "status") status = Number(value.split(" ")[0]); else response.setHeader(name, value);
    }
    response.writeHead(status);
    response.write(head.subarray(end + 4));
  });
  cgi.stdout.on("end", () => response.end());
}).listen(Number(port), "127.0.0.1");
`;

/** A tree as comparable data: "type mode sha256" or "link -> target" per entry, and files' mtimes (ms). */
interface Tree {
  entries: Record<string, string>;
  mtimes: Record<string, number>;
}

function localTree(root: string): Tree {
  const tree: Tree = { entries: {}, mtimes: {} };
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel))) {
      const path = rel ? `${rel}/${name}` : name;
      const stat = lstatSync(join(root, path));
      const mode = (stat.mode & 0o7777).toString(8);
      if (stat.isSymbolicLink()) tree.entries[path] = `link -> ${readlinkSync(join(root, path))}`;
      else if (stat.isDirectory()) {
        tree.entries[path] = `dir ${mode}`;
        walk(path);
      } else {
        tree.entries[path] = `file ${mode} ${createHash("sha256").update(readFileSync(join(root, path))).digest("hex")}`;
        tree.mtimes[path] = stat.mtimeMs;
      }
    }
  };
  walk("");
  return tree;
}

function assertSameTree(actual: Tree, expected: Tree, what: string): void {
  assert.deepEqual(actual.entries, expected.entries, what);
  for (const [path, mtime] of Object.entries(expected.mtimes)) {
    assert.ok(Math.abs(actual.mtimes[path]! - mtime) < 1, `${what}: ${path} mtime ${actual.mtimes[path]} vs ${mtime}`);
  }
}

describe("git and sync through the SDK (real server, real VM)", () => {
  let server: LocalServer;
  let sandbox: Sandbox;
  let sdk: typeof import("@codecourier/sdk");
  const local = mkdtempSync(join(tmpdir(), "cc-sync-test-"));
  const author = { name: "Ann Agent", email: "ann@example.com" };

  const shell = async (command: string) => {
    const result = await sandbox.runCommand(["sh", "-c", command]);
    assert.equal(result.exitCode, 0, `${command}: ${result.stderr}`);
    return result.stdout;
  };

  /** The guest's side of a tree, listed and hashed in the guest itself (not through sync). */
  const guestTree = async (dir: string): Promise<Tree> => {
    const listing = await sandbox.runCommand(["sh", "-c", `cd "$1" && find . -mindepth 1 -printf '%y\\0%m\\0%T@\\0%P\\0%l\\0'`, "sh", dir]);
    const hashes = await sandbox.runCommand(["sh", "-c", `cd "$1" && find . -type f -printf '%P\\0' | xargs -0 -r sha256sum -z --`, "sh", dir]);
    assert.equal(listing.exitCode, 0, listing.stderr);
    const digest = new Map(hashes.stdout.split("\0").filter(Boolean).map((record) => [record.slice(66), record.slice(0, 64)] as const));
    const tree: Tree = { entries: {}, mtimes: {} };
    const fields = listing.stdout.split("\0");
    for (let i = 0; i + 5 <= fields.length - 1; i += 5) {
      const [type, mode, mtime, path, target] = fields.slice(i, i + 5) as [string, string, string, string, string];
      if (type === "l") tree.entries[path] = `link -> ${target}`;
      else if (type === "d") tree.entries[path] = `dir ${mode}`;
      else {
        tree.entries[path] = `file ${mode} ${digest.get(path)}`;
        tree.mtimes[path] = Number(mtime) * 1000;
      }
    }
    return tree;
  };

  before(async () => {
    server = await startLocalServer({ prefix: "ccgitsync-" });
    const key = await server.adminKey();
    sdk = await import("@codecourier/sdk");
    sandbox = await sdk.createSandbox({ url: server.url, apiKey: key }).catch((error: unknown) => {
      throw new Error(`no sandbox: ${String(error)}\nserver log:\n${server.log()}`);
    });
  });

  after(async () => {
    await sandbox?.kill().catch(() => undefined);
    await server?.stop();
    rmSync(local, { recursive: true, force: true });
  });

  it("inits, clones (depth, branch), reports status, adds, commits, diffs, branches and pushes to a bare repo", async () => {
    const { git } = sandbox;
    await git.init("/srv/origin.git", { bare: true, initialBranch: "main" });
    await git.init("seed", { initialBranch: "main" });
    await sandbox.files.write("seed/README.md", "# seed\n");
    await git.add("seed", { all: true });
    const first = await git.commit("seed", "first", { author });
    await git.commit("seed", "second (empty)", { author, allowEmpty: true });
    await git.push("seed", { remote: "/srv/origin.git", branch: "main" });

    // file:// so that depth applies (a plain path clones locally, whole).
    await git.clone("file:///srv/origin.git", "work", { depth: 1, branch: "main" });
    assert.equal((await shell("git -C work rev-list --count HEAD")).trim(), "1", "a shallow clone of depth 1");
    assert.notEqual((await shell("git -C work rev-parse HEAD")).trim(), first);

    await sandbox.files.write("work/new file ü.txt", "new\n");
    let status = await git.status("work");
    assert.equal(status.branch, "main");
    assert.equal(status.upstream, "origin/main");
    assert.deepEqual(status.untracked, ["new file ü.txt"]);
    assert.equal(status.clean, false);

    await git.add("work", ["new file ü.txt"]);
    status = await git.status("work");
    assert.deepEqual(status.staged, [{ path: "new file ü.txt", change: "added" }]);
    assert.deepEqual(status.untracked, []);
    const message = "add a file; $(reboot) `id` -- 'quoted'";
    const sha = await git.commit("work", message, { author });
    assert.match(sha, /^[0-9a-f]{40}$/);
    assert.equal((await shell("git -C work rev-parse HEAD")).trim(), sha);
    assert.equal((await shell("git -C work log -1 --format='%an <%ae>|%s'")).trim(), `Ann Agent <ann@example.com>|${message}`);
    assert.equal((await git.status("work")).ahead, 1);

    await sandbox.files.write("work/README.md", "# seed\nmore\n");
    assert.match(await git.diff("work"), /^\+more$/m);
    assert.equal(await git.diff("work", { staged: true }), "");
    await git.add("work", "README.md");
    assert.match(await git.diff("work", { staged: true, paths: ["README.md"] }), /^\+more$/m);
    const second = await git.commit("work", "more", { author });

    await git.checkout("work", "feature", { create: true });
    assert.equal((await git.status("work")).branch, "feature");
    await git.push("work", { setUpstream: true });
    assert.equal((await shell("git -C /srv/origin.git log -1 --format=%H feature")).trim(), second);
    // The upstream is recorded (a single-branch clone keeps no origin/feature ref for status to show).
    assert.equal((await shell("git -C work config branch.feature.merge")).trim(), "refs/heads/feature");
    await git.checkout("work", "main");
    assert.equal((await git.status("work")).branch, "main");
  });

  it("fails with a GitError that says why: not a repository, unknown ref, nothing to commit", async () => {
    const notRepo = await sandbox.git.status("/tmp").catch((error: unknown) => error);
    assert.ok(notRepo instanceof sdk.GitError, String(notRepo));
    assert.equal(notRepo.reason, "not_a_repository");
    assert.equal(notRepo.subcommand, "status");
    assert.equal(notRepo.exitCode, 128);
    assert.match(notRepo.stderr, /not a git repository/);
    const unknown = await sandbox.git.checkout("work", "no-such-branch").catch((error: unknown) => error);
    assert.ok(unknown instanceof sdk.GitError && unknown.reason === "unknown_ref", String(unknown));
    const nothing = await sandbox.git.commit("work", "nothing", { author }).catch((error: unknown) => error);
    assert.ok(nothing instanceof sdk.GitError && nothing.reason === "nothing_to_commit", String(nothing));
  });

  it("keeps credentials out of messages and .git/config: unreachable server, wrong and right passwords over HTTP", async () => {
    const urlSecret = "url-secret-pass-1";
    const optionSecret = "option-secret-pass-2";
    const unreachable = await sandbox.git
      .clone(`http://ann:${urlSecret}@127.0.0.1:9/repo.git`, "denied", { credentials: { username: "ann", password: optionSecret } })
      .catch((error: unknown) => error);
    assert.ok(unreachable instanceof sdk.GitError, String(unreachable));
    assert.equal(unreachable.reason, "network");
    for (const secret of [urlSecret, optionSecret]) {
      assert.ok(!unreachable.message.includes(secret) && !unreachable.stderr.includes(secret), `the error names no secret: ${unreachable.message}`);
    }
    const leftovers = await sandbox.runCommand(["sh", "-c", `grep -rs -e "$1" -e "$2" denied; ls -a denied 2>&1`, "sh", urlSecret, optionSecret]);
    assert.doesNotMatch(leftovers.stdout, new RegExp(`${urlSecret}|${optionSecret}`));

    // A real smart-HTTP server with Basic auth, in the guest.
    const password = "s3cret-in-guest-9";
    const httpServer = await sandbox.runCommand([GUEST_NODE, "-e", GIT_HTTP_SERVER, "/srv", "ann", password, String(GIT_HTTP_PORT)], { background: true });
    try {
      await shell(`for i in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:${GIT_HTTP_PORT}/ && exit 0; sleep 0.1; done; exit 1`);
      const remote = `http://127.0.0.1:${GIT_HTTP_PORT}/origin.git`;
      const wrong = await sandbox.git.clone(remote, "wrong", { credentials: { username: "ann", password: "not-the-password" } }).catch((error: unknown) => error);
      assert.ok(wrong instanceof sdk.GitError && wrong.reason === "authentication_failed", String(wrong));
      assert.ok(!wrong.message.includes("not-the-password"));
      const none = await sandbox.git.clone(remote, "anonymous").catch((error: unknown) => error);
      assert.ok(none instanceof sdk.GitError && none.reason === "authentication_failed", "no prompt: fails at once");

      await sandbox.git.clone(remote, "via-http", { branch: "feature", credentials: { username: "ann", password } });
      await sandbox.files.write("via-http/pushed.txt", "over http\n");
      await sandbox.git.add("via-http", "pushed.txt");
      const sha = await sandbox.git.commit("via-http", "pushed over http", { author });
      await sandbox.git.push("via-http", { credentials: { username: "ann", password } });
      assert.equal((await shell("git -C /srv/origin.git log -1 --format=%H feature")).trim(), sha);
      const config = await sandbox.files.read("via-http/.git/config");
      assert.ok(config.includes(remote) && !config.includes(password), `.git/config keeps the URL, not the password:\n${config}`);
      assert.equal((await sandbox.runCommand(["grep", "-rqs", password, "via-http/.git", "/root/.gitconfig", "/root/.git-credentials"])).exitCode !== 0, true);
    } finally {
      await httpServer.kill().catch(() => undefined);
    }
  });

  it("syncs a nested tree up, then only a change and a delete; then down both ways with delete; modes, links and mtimes kept", async () => {
    const put = (path: string, content: string, mtimeS: number, mode = 0o644) => {
      mkdirSync(join(local, path, ".."), { recursive: true });
      writeFileSync(join(local, path), content, { mode });
      utimesSync(join(local, path), mtimeS, mtimeS);
    };
    const longName = `${"ł".repeat(60)} long.txt`; // over 100 bytes: PAX in both directions
    put("a.txt", "alpha", 1_700_000_000.123);
    put("with space/b.txt", "bravo", 1_700_000_001.5);
    put(`ünïcødé dir/${longName}`, "unicode", 1_700_000_002);
    put("bin/run.sh", "#!/bin/sh\necho hi\n", 1_700_000_003, 0o755);
    mkdirSync(join(local, "empty"));
    symlinkSync("../a.txt", join(local, "bin", "link"));

    const first = await sandbox.files.sync(local, "synced", { direction: "up" });
    assert.deepEqual(first, { direction: "up", uploaded: 5, downloaded: 0, deleted: 0, unchanged: 0, bytes: 5 + 5 + 7 + 18 });
    assertSameTree(await guestTree("synced"), localTree(local), "after the first sync up");
    assert.equal((await shell("ls -A /tmp | grep -c codecourier-sync || true")).trim(), "0", "the temp archive is gone");

    put("a.txt", "ALPHA", 1_700_000_100); // same size, other content: found by hash
    rmSync(join(local, "with space/b.txt"));
    const second = await sandbox.files.sync(local, "synced", { direction: "up", delete: true });
    assert.deepEqual(second, { direction: "up", uploaded: 1, downloaded: 0, deleted: 1, unchanged: 3, bytes: 5 });
    assertSameTree(await guestTree("synced"), localTree(local), "after the change and the delete");

    // The guest changes things; the local side has one file of its own.
    await shell(`cd synced && printf guest > from-guest.txt && touch -d @1700000200.5 from-guest.txt && printf '#!/bin/sh\\necho bye\\n' > bin/run.sh && rm -r empty`);
    writeFileSync(join(local, "local-only.txt"), "mine");
    const down = await sandbox.files.sync(local, "synced", { direction: "down", delete: true });
    assert.deepEqual(down, { direction: "down", uploaded: 0, downloaded: 2, deleted: 2, unchanged: 3, bytes: 5 + 19 });
    assertSameTree(localTree(local), await guestTree("synced"), "after the sync down");
    assert.ok(Math.abs(lstatSync(join(local, "from-guest.txt")).mtimeMs - 1_700_000_200_500) < 1, "the guest's mtime arrived");
    assert.equal(lstatSync(join(local, "bin/run.sh")).mode & 0o777, 0o755);

    // Both ways again, nothing left to do; then a fresh directory gets the whole tree.
    assert.equal((await sandbox.files.sync(local, "synced", { direction: "up", delete: true })).uploaded, 0);
    assert.equal((await sandbox.files.sync(local, "synced", { direction: "down", delete: true })).downloaded, 0);
    const fresh = join(local, "..", `${local.split("/").pop()}-fresh`);
    try {
      const whole = await sandbox.files.sync(fresh, "synced", { direction: "down" });
      assert.equal(whole.downloaded, 5);
      assertSameTree(localTree(fresh), await guestTree("synced"), "a fresh download");
    } finally {
      rmSync(fresh, { recursive: true, force: true });
    }
  });
});
