// sandbox.git without a VM: the pure parts (status parsing, failure reasons, credential scrubbing and URL
// handling), then every method run by this machine's git (the guest's Debian has the same 2.39) against a real
// smart-HTTP server with Basic auth, to show the credential helper works and leaves no secret behind.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { isAbsolute, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { GitError } from "./errors.js";
import { credentialArgs, gitFailureReason, parseStatusV2, SandboxGit, scrubSecrets, splitUrlCredentials, type GitCommandRunner } from "./git.js";

describe("git status --porcelain=v2 parsing", () => {
  it("reads branch, upstream, ahead/behind and each kind of change, names with spaces and renames included", () => {
    const records = [
      "# branch.oid 0123456789abcdef0123456789abcdef01234567",
      "# branch.head feature/x",
      "# branch.upstream origin/feature/x",
      "# branch.ab +2 -1",
      "1 M. N... 100644 100644 100644 aaaa bbbb staged file.txt",
      "1 .M N... 100644 100644 100644 aaaa aaaa worktree.txt",
      "1 AD N... 000000 100644 000000 0000 bbbb added then deleted",
      "2 R. N... 100644 100644 100644 aaaa aaaa R100 new name.txt",
      "old name.txt",
      "u UU N... 100644 100644 100644 100644 a b c conflict.txt",
      "? untracked dir/ü.txt",
      "! ignored.log",
    ];
    const status = parseStatusV2(`${records.join("\0")}\0`);
    assert.deepEqual(status, {
      branch: "feature/x",
      commit: "0123456789abcdef0123456789abcdef01234567",
      upstream: "origin/feature/x",
      ahead: 2,
      behind: 1,
      staged: [
        { path: "staged file.txt", change: "modified" },
        { path: "added then deleted", change: "added" },
        { path: "new name.txt", change: "renamed", from: "old name.txt" },
      ],
      unstaged: [
        { path: "worktree.txt", change: "modified" },
        { path: "added then deleted", change: "deleted" },
      ],
      untracked: ["untracked dir/ü.txt"],
      conflicted: ["conflict.txt"],
      clean: false,
    });
  });

  it("reads a fresh repository (no commit yet) and a detached HEAD", () => {
    const fresh = parseStatusV2("# branch.oid (initial)\0# branch.head main\0");
    assert.equal(fresh.commit, null);
    assert.equal(fresh.branch, "main");
    assert.equal(fresh.clean, true);
    assert.equal(fresh.upstream, null);
    const detached = parseStatusV2("# branch.oid abc\0# branch.head (detached)\0");
    assert.equal(detached.branch, null);
  });
});

describe("git failure reasons", () => {
  const reason = (stderr: string, stdout = "", exitCode: number | null = 128) => gitFailureReason({ stderr, stdout, exitCode, timedOut: false });
  it("tells the common failures apart", () => {
    assert.equal(reason("fatal: not a git repository (or any of the parent directories): .git"), "not_a_repository");
    assert.equal(reason("fatal: could not read Username for 'https://example.com': terminal prompts disabled"), "authentication_failed");
    assert.equal(reason("remote: Invalid username or password.\nfatal: Authentication failed for 'https://example.com/r.git/'"), "authentication_failed");
    assert.equal(reason("fatal: unable to access 'http://127.0.0.1:9/r.git/': Failed to connect to 127.0.0.1 port 9: Connection refused"), "network");
    assert.equal(reason("fatal: unable to access 'https://nohost/': Could not resolve host: nohost"), "network");
    assert.equal(reason("fatal: repository 'https://example.com/nope.git/' not found\nremote: Repository not found."), "repository_not_found");
    assert.equal(reason(" ! [rejected]        main -> main (fetch first)\nerror: failed to push some refs", "", 1), "rejected");
    assert.equal(reason("", "On branch main\nnothing to commit, working tree clean\n", 1), "nothing_to_commit");
    assert.equal(reason("*** Please tell me who you are."), "identity_unknown");
    assert.equal(reason("error: pathspec 'nope' did not match any file(s) known to git", "", 1), "unknown_ref");
    assert.equal(reason("fatal: pathspec 'nope.txt' did not match any files"), "path_not_found");
    assert.equal(reason("fatal: a branch named 'x' already exists"), "already_exists");
    assert.equal(reason("sh: 1: git: not found", "", 127), "git_missing");
    assert.equal(reason("something new"), "other");
    assert.equal(gitFailureReason({ stderr: "", stdout: "", exitCode: null, timedOut: true }), "timeout");
  });
});

describe("git credentials", () => {
  it("scrubs secrets, their URL-encoded forms and any URL's user-info", () => {
    const text = "fatal: Authentication failed for 'https://ann:p%40ss%2Fw0rd@example.com/r.git' (p@ss/w0rd; token ghp_123456)";
    const scrubbed = scrubSecrets(text, ["p@ss/w0rd", "ghp_123456"]);
    assert.equal(scrubbed, "fatal: Authentication failed for 'https://***@example.com/r.git' (***; token ***)");
    assert.equal(scrubSecrets("a b c", ["b"]), "a b c", "a secret too short to scrub usefully is left alone");
  });

  it("takes credentials out of a URL, decoded, and leaves other addresses alone", () => {
    assert.deepEqual(splitUrlCredentials("https://ann:p%40ss@example.com/r.git"), {
      url: "https://example.com/r.git",
      credentials: { username: "ann", password: "p@ss" },
    });
    assert.deepEqual(splitUrlCredentials("https://ghp_tok@example.com/r.git"), { url: "https://example.com/r.git", credentials: { token: "ghp_tok" } });
    for (const address of ["git@github.com:o/r.git", "/srv/repo.git", "file:///srv/repo.git", "https://example.com/r.git"]) {
      assert.deepEqual(splitUrlCredentials(address), { url: address, credentials: undefined });
    }
  });

  it("hands them to git through the environment and a host-scoped helper that names only variables", () => {
    const { config, env } = credentialArgs("https://example.com:8443/r.git", { token: "s3cret-token" });
    assert.equal(config.length, 4);
    assert.equal(config[1], "credential.helper=");
    assert.match(config[3]!, /^credential\.https:\/\/example\.com:8443\.helper=!f\(\)/);
    assert.ok(!config.join(" ").includes("s3cret-token"), "the command line holds no secret");
    assert.deepEqual(env, { CODECOURIER_GIT_USERNAME: "x-access-token", CODECOURIER_GIT_PASSWORD: "s3cret-token" });
    assert.deepEqual(credentialArgs("/local/path", { token: "t" }), { config: [], env: {} });
    assert.throws(() => credentialArgs("https://h/r", { username: "a", password: "x\nhost=evil" }), /newline/);
    assert.throws(() => credentialArgs("https://h/r", { username: "a" }), RangeError);
  });
});

/**
 * A smart-HTTP git server (git http-backend as CGI) that wants Basic auth `user:password` and records every
 * Authorization header it was sent.
 */
async function startGitHttpServer(projectRoot: string, user: string, password: string): Promise<{ server: Server; url: string; seenAuth: string[] }> {
  const expected = `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
  const seenAuth: string[] = [];
  const server = createServer((request, response) => {
    if (request.headers.authorization) seenAuth.push(request.headers.authorization);
    if (request.headers.authorization !== expected) {
      response.writeHead(401, { "www-authenticate": 'Basic realm="git"' }).end();
      return;
    }
    const url = new URL(request.url!, "http://x");
    const cgi = spawn("git", ["http-backend"], {
      env: {
        ...process.env,
        GIT_PROJECT_ROOT: projectRoot,
        GIT_HTTP_EXPORT_ALL: "1",
        REMOTE_USER: user,
        REQUEST_METHOD: request.method!,
        PATH_INFO: decodeURIComponent(url.pathname),
        QUERY_STRING: url.search.slice(1),
        CONTENT_TYPE: request.headers["content-type"] ?? "",
      },
    });
    cgi.stdin.on("error", () => undefined);
    request.pipe(cgi.stdin);
    let head = Buffer.alloc(0);
    let headDone = false;
    cgi.stdout.on("data", (chunk: Buffer) => {
      if (headDone) return void response.write(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end === -1) return;
      headDone = true;
      let status = 200;
      for (const line of head.subarray(0, end).toString().split("\r\n")) {
        const colon = line.indexOf(":");
        const [name, value] = [line.slice(0, colon).trim(), line.slice(colon + 1).trim()];
        if (name.toLowerCase() === "status") status = Number(value.split(" ")[0]);
        else response.setHeader(name, value);
      }
      response.writeHead(status);
      response.write(head.subarray(end + 4));
    });
    cgi.stdout.on("end", () => response.end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seenAuth };
}

describe("SandboxGit run by this machine's git (smart HTTP with Basic auth)", () => {
  const base = mkdtempSync(join(tmpdir(), "cc-git-"));
  const home = join(base, "home"); // the "guest's" working directory and HOME: no user config
  const served = join(base, "served");
  const password = "Tr0ub4dor&3-not-in-config";
  let server: Awaited<ReturnType<typeof startGitHttpServer>>;
  const commands: string[][] = [];
  const run: GitCommandRunner = async (argv, options) => {
    commands.push([...argv]);
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: home, GIT_CONFIG_NOSYSTEM: "1", ...options.env };
    // Asynchronous: the HTTP server git talks to runs in this same event loop.
    const child = spawn(argv[0]!, argv.slice(1), { cwd: home, env });
    child.stdin.on("error", () => undefined); // git may exit without reading stdin
    child.stdin.end(options.stdin ?? "");
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const [exitCode, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on("close", (code, sig) => resolve([code, sig])));
    return { exitCode, signal, timedOut: false, stdout, stderr };
  };
  const git = new SandboxGit(run);
  const at = (path: string) => (isAbsolute(path) ? path : join(home, path));
  const author = { name: "Ann Agent", email: "ann@example.com" };

  before(async () => {
    spawnSync("mkdir", ["-p", home, served]);
    server = await startGitHttpServer(served, "ann", password);
  });
  after(async () => {
    server?.server.closeAllConnections();
    await new Promise((resolve) => server?.server.close(resolve));
    rmSync(base, { recursive: true, force: true });
  });

  it("init, status, add, commit, diff, checkout -b, push over HTTP with credentials, clone with depth and branch", async () => {
    await git.init(join(served, "repo.git"), { bare: true, initialBranch: "main" });
    spawnSync("git", ["-C", join(served, "repo.git"), "config", "http.receivepack", "true"]);
    await git.init("work", { initialBranch: "main" });
    writeFileSync(at("work/hello world.txt"), "hello\n");
    let status = await git.status("work");
    assert.deepEqual(status.untracked, ["hello world.txt"]);
    assert.equal(status.branch, "main");
    assert.equal(status.commit, null);

    await git.add("work", "hello world.txt");
    status = await git.status("work");
    assert.deepEqual(status.staged, [{ path: "hello world.txt", change: "added" }]);
    const message = "--first; $(touch /tmp/pwned) `id` 'quoted'\n\nbody";
    const sha = await git.commit("work", message, { author });
    assert.match(sha, /^[0-9a-f]{40}$/);
    const log = spawnSync("git", ["-C", at("work"), "log", "-1", "--format=%H%n%an <%ae>%n%B"], { encoding: "utf8" }).stdout;
    assert.equal(log, `${sha}\nAnn Agent <ann@example.com>\n${message}\n\n`, "the message arrives as written, nothing run");

    writeFileSync(at("work/hello world.txt"), "hello\nagain\n");
    const diff = await git.diff("work");
    assert.match(diff, /^\+again$/m);
    assert.equal(await git.diff("work", { staged: true }), "");
    await git.add("work", { all: true });
    assert.match(await git.diff("work", { staged: true, paths: ["hello world.txt"] }), /^\+again$/m);
    await git.commit("work", "second", { author });
    await git.checkout("work", "feature", { create: true });
    assert.equal((await git.status("work")).branch, "feature");

    spawnSync("git", ["-C", at("work"), "remote", "add", "origin", `${server.url}/repo.git`]);
    await assert.rejects(git.push("work"), (error: unknown) => error instanceof GitError && error.reason === "authentication_failed");
    await git.push("work", { credentials: { username: "ann", password }, setUpstream: true });
    await git.push("work", { branch: "main", credentials: { username: "ann", password } });
    status = await git.status("work");
    assert.equal(status.upstream, "origin/feature");
    assert.equal(status.ahead, 0);

    await git.clone(`${server.url}/repo.git`, "shallow", { depth: 1, branch: "feature", credentials: { username: "ann", password } });
    const cloned = await git.status("shallow");
    assert.equal(cloned.branch, "feature");
    assert.equal(spawnSync("git", ["-C", at("shallow"), "rev-list", "--count", "HEAD"], { encoding: "utf8" }).stdout.trim(), "1", "depth 1");
    // Credentials written into the URL work the same, and are not stored.
    await git.clone(`http://ann:${encodeURIComponent(password)}@${server.url.slice("http://".length)}/repo.git`, "from-url");

    for (const dir of ["work", "shallow", "from-url"]) {
      const config = readFileSync(at(`${dir}/.git/config`), "utf8");
      assert.ok(!config.includes(password) && !config.includes(encodeURIComponent(password)), `${dir}/.git/config holds no password`);
      assert.ok(!config.includes("ann@"), `${dir}/.git/config holds no user-info`);
    }
    assert.ok(!commands.flat().some((arg) => arg.includes(password)), "no command line held the password");
    assert.ok(server.seenAuth.length > 0, "the server did get credentials");
  });

  it("fails with typed, scrubbed errors: wrong password, not a repository, unknown ref", async () => {
    const wrong = "wrong-password-123";
    const error = await git.clone(`${server.url}/repo.git`, "denied", { credentials: { username: "ann", password: wrong } }).catch((e: unknown) => e);
    assert.ok(error instanceof GitError);
    assert.equal(error.reason, "authentication_failed");
    assert.equal(error.subcommand, "clone");
    assert.equal(error.exitCode, 128);
    assert.ok(!error.message.includes(wrong) && !error.stderr.includes(wrong));

    writeFileSync(at("plain.txt"), "x");
    const notRepo = await git.status(home).catch((e: unknown) => e);
    assert.ok(notRepo instanceof GitError);
    assert.equal(notRepo.reason, "not_a_repository");
    assert.equal(notRepo.code, "git_failed");

    const unknown = await git.checkout("work", "no-such-branch").catch((e: unknown) => e);
    assert.ok(unknown instanceof GitError && unknown.reason === "unknown_ref", String(unknown));
    await assert.rejects(git.checkout("work", "--orphan"), RangeError, "a ref may not pose as an option");
    const nothing = await git.commit("work", "nothing", { author }).catch((e: unknown) => e);
    assert.ok(nothing instanceof GitError && nothing.reason === "nothing_to_commit", String(nothing));
  });
});
