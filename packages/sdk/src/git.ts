/**
 * `sandbox.git`: git in the sandbox, run as argv (never through a shell), so messages, paths and refs need no
 * quoting and cannot inject anything.
 *
 * Credentials never reach the sandbox's command lines (`ps`), the repository's config or an error message: they
 * travel in the command's environment (CODECOURIER_GIT_USERNAME/PASSWORD), which a credential helper given with
 * `-c` for that one command reads — the helper's text names only the variables. The helper is scoped to the URL's
 * scheme and host, so a redirect to another host gets nothing; helpers from the guest's own config are switched
 * off for that command. Credentials written into a URL (`https://user:token@host/…`) are taken out of it before
 * git sees it, so the URL stored in .git/config is clean. Every git command runs with GIT_TERMINAL_PROMPT=0, so
 * missing credentials fail at once instead of waiting for a prompt.
 */
import type { CommandOutcome } from "./command-result.js";
import type { RequestOptions } from "./client.js";
import { GitError, type GitFailureReason } from "./errors.js";

export interface GitCredentials {
  username?: string;
  password?: string;
  /**
   * An access token: sent as the password, with `username` if given, else "x-access-token" (GitHub's convention;
   * most servers accept any non-empty username with a token).
   */
  token?: string;
}

export interface GitCommandOptions extends RequestOptions {
  /** Bound on the git command in the sandbox (ms). */
  timeoutMs?: number;
}

export interface GitCloneOptions extends GitCommandOptions {
  /** A shallow clone of this many commits. */
  depth?: number;
  /** The branch (or tag) to check out instead of the remote's HEAD. */
  branch?: string;
  credentials?: GitCredentials;
}

export interface GitInitOptions extends GitCommandOptions {
  bare?: boolean;
  /** The first branch's name (default: git's, "master" unless the guest configures another). */
  initialBranch?: string;
}

export interface GitCommitOptions extends GitCommandOptions {
  /** Author and committer; without it, the repository's or guest's user.name/user.email (else "identity_unknown"). */
  author?: { name: string; email: string };
  allowEmpty?: boolean;
}

export interface GitPushOptions extends GitCommandOptions {
  /** Default "origin". */
  remote?: string;
  /** The local branch to push to the same name on the remote; default: the current branch. */
  branch?: string;
  /** Record the pushed branch as the local one's upstream (`-u`). */
  setUpstream?: boolean;
  credentials?: GitCredentials;
}

export interface GitDiffOptions extends GitCommandOptions {
  /** The index against HEAD (what a commit would record) instead of the working tree against the index. */
  staged?: boolean;
  /** Only these paths. */
  paths?: readonly string[];
}

export interface GitCheckoutOptions extends GitCommandOptions {
  /** Create the branch `ref` (from `startPoint`, default HEAD) and switch to it. */
  create?: boolean;
  startPoint?: string;
}

export interface GitStatusOptions extends GitCommandOptions {
  /** "all" (default): every untracked file; "normal": an untracked directory as one "dir/" entry; "no": none. */
  untracked?: "all" | "normal" | "no";
}

export type GitChange = "added" | "modified" | "deleted" | "renamed" | "copied" | "type_changed" | "unmerged";

export interface GitFileChange {
  path: string;
  change: GitChange;
  /** The path before a rename or copy. */
  from?: string;
}

export interface GitStatus {
  /** The current branch; null when HEAD is detached. */
  branch: string | null;
  /** HEAD's commit; null before the first commit. */
  commit: string | null;
  /** The upstream branch ("origin/main"), or null without one. */
  upstream: string | null;
  /** Commits ahead of and behind the upstream (0 without one). */
  ahead: number;
  behind: number;
  /** Changes in the index (what the next commit records). */
  staged: GitFileChange[];
  /** Changes in the working tree not yet added. */
  unstaged: GitFileChange[];
  untracked: string[];
  /** Paths with merge conflicts. */
  conflicted: string[];
  /** Nothing staged, unstaged, untracked or conflicted. */
  clean: boolean;
}

/** What the git capability needs of a sandbox: running an argv to completion. */
export type GitCommandRunner = (
  argv: readonly string[],
  options: { env: Record<string, string>; stdin?: string; timeoutMs?: number; signal?: AbortSignal },
) => Promise<CommandOutcome>;

/** Variables every git command gets: no prompts (fail instead), English messages (the failure reasons read them). */
const GIT_ENV = { GIT_TERMINAL_PROMPT: "0", GIT_ASKPASS: "", LC_ALL: "C" };
const USERNAME_VAR = "CODECOURIER_GIT_USERNAME";
const PASSWORD_VAR = "CODECOURIER_GIT_PASSWORD";
/** A credential helper that answers `get` from the environment; its text holds no secret. */
const ENV_CREDENTIAL_HELPER = `!f() { test "$1" = get || return 0; printf 'username=%s\\npassword=%s\\n' "$${USERNAME_VAR}" "$${PASSWORD_VAR}"; }; f`;

/** Git in one sandbox. Directories are the guest's: absolute, or relative to the sandbox's working directory. */
export class SandboxGit {
  readonly #run: GitCommandRunner;

  constructor(run: GitCommandRunner) {
    this.#run = run;
  }

  /** `git init [--bare] dir`. */
  async init(dir: string, options: GitInitOptions = {}): Promise<void> {
    const args = ["init", "--quiet"];
    if (options.bare) args.push("--bare");
    if (options.initialBranch !== undefined) args.push(`--initial-branch=${checkRefName(options.initialBranch, "initialBranch")}`);
    await this.#git("init", [...args, "--", dir], options);
  }

  /**
   * Clones `url` into `dir`. Credentials (given, or found in the URL) are used for this clone only and are stored
   * nowhere in the sandbox.
   */
  async clone(url: string, dir: string, options: GitCloneOptions = {}): Promise<void> {
    const { url: cleanUrl, credentials: fromUrl } = splitUrlCredentials(url);
    const args = ["clone", "--quiet"];
    if (options.depth !== undefined) {
      if (!Number.isInteger(options.depth) || options.depth < 1) throw new RangeError(`depth must be a positive integer, not ${options.depth}`);
      args.push(`--depth=${options.depth}`);
    }
    if (options.branch !== undefined) args.push(`--branch=${checkRefName(options.branch, "branch")}`);
    const credentials = options.credentials ?? fromUrl;
    const auth = credentialArgs(cleanUrl, credentials);
    await this.#git("clone", [...auth.config, ...args, "--", cleanUrl, dir], options, { env: auth.env, secrets: secretsOf(credentials) });
  }

  /** The working tree's state: branch, upstream, ahead/behind, and the changed files by kind. */
  async status(dir: string, options: GitStatusOptions = {}): Promise<GitStatus> {
    const untracked = options.untracked ?? "all";
    const result = await this.#git(
      "status",
      ["-C", dir, "status", "--porcelain=v2", "--branch", "-z", `--untracked-files=${untracked}`],
      options,
    );
    return parseStatusV2(result.stdout);
  }

  /** Stages `paths` (one or several), or everything, deletions included, with `{ all: true }`. */
  async add(dir: string, paths: string | readonly string[] | { all: true }, options: GitCommandOptions = {}): Promise<void> {
    if (typeof paths === "object" && !Array.isArray(paths) && "all" in paths) {
      await this.#git("add", ["-C", dir, "add", "--all"], options);
      return;
    }
    const list = typeof paths === "string" ? [paths] : (paths as readonly string[]);
    if (list.length === 0) throw new RangeError("add: give at least one path, or { all: true }");
    await this.#git("add", ["-C", dir, "add", "--", ...list], options);
  }

  /** Commits what is staged; returns the new commit's sha. The message goes on stdin, whatever it holds. */
  async commit(dir: string, message: string, options: GitCommitOptions = {}): Promise<string> {
    const env: Record<string, string> = {};
    if (options.author) {
      const { name, email } = options.author;
      Object.assign(env, { GIT_AUTHOR_NAME: name, GIT_AUTHOR_EMAIL: email, GIT_COMMITTER_NAME: name, GIT_COMMITTER_EMAIL: email });
    }
    const args = ["-C", dir, "commit", "--quiet", "--file=-"];
    if (options.allowEmpty) args.push("--allow-empty");
    await this.#git("commit", args, options, { env, stdin: message });
    const head = await this.#git("rev-parse", ["-C", dir, "rev-parse", "--verify", "HEAD"], options);
    return head.stdout.trim();
  }

  /** Pushes a branch (default: the current one, to the same name) to a remote (default "origin"). */
  async push(dir: string, options: GitPushOptions = {}): Promise<void> {
    const branch = options.branch === undefined ? "HEAD" : checkRefName(options.branch, "branch");
    // A remote is a name ("origin") or itself a URL or path, whose credentials are taken out like clone's.
    const given = checkRefName(options.remote ?? "origin", "remote");
    const isAddress = given.includes(":") || given.includes("/");
    const { url: remote, credentials: fromUrl } = isAddress ? splitUrlCredentials(given) : { url: given, credentials: undefined };
    const credentials = options.credentials ?? fromUrl;
    let auth: { config: string[]; env: Record<string, string> } = { config: [], env: {} };
    if (credentials !== undefined) {
      // The helper is scoped to the remote's host, so a named remote's URL is looked up first.
      const url = isAddress ? remote : (await this.#git("remote", ["-C", dir, "remote", "get-url", "--push", remote], options)).stdout.trim();
      auth = credentialArgs(splitUrlCredentials(url).url, credentials);
    }
    const args = ["push", "--quiet"];
    if (options.setUpstream) args.push("--set-upstream");
    await this.#git("push", [...auth.config, "-C", dir, ...args, remote, branch], options, { env: auth.env, secrets: secretsOf(credentials) });
  }

  /** The diff as text: the working tree against the index, or with `staged` the index against HEAD. */
  async diff(dir: string, options: GitDiffOptions = {}): Promise<string> {
    const args = ["-C", dir, "-c", "core.quotePath=false", "diff", "--no-color", "--no-ext-diff"];
    if (options.staged) args.push("--cached");
    args.push("--", ...(options.paths ?? []));
    return (await this.#git("diff", args, options)).stdout;
  }

  /** Switches to a branch, tag or commit; with `create`, to a new branch `ref`. */
  async checkout(dir: string, ref: string, options: GitCheckoutOptions = {}): Promise<void> {
    checkRefName(ref, "ref");
    const args = ["-C", dir, "checkout", "--quiet"];
    if (options.create) {
      args.push("-b", ref);
      if (options.startPoint !== undefined) args.push(checkRefName(options.startPoint, "startPoint"));
    } else {
      args.push(ref, "--"); // "--": ref is a ref, even if a file has its name
    }
    await this.#git("checkout", args, options);
  }

  async #git(
    subcommand: string,
    args: string[],
    options: GitCommandOptions,
    extra: { env?: Record<string, string>; stdin?: string; secrets?: string[] } = {},
  ): Promise<CommandOutcome> {
    const result = await this.#run(["git", ...args], {
      env: { ...GIT_ENV, ...extra.env },
      ...(extra.stdin !== undefined ? { stdin: extra.stdin } : {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
      ...(options.signal !== undefined ? { signal: options.signal } : {}),
    });
    if (result.exitCode === 0 && !result.timedOut) return result;
    const secrets = extra.secrets ?? [];
    const stderr = scrubSecrets(result.stderr, secrets);
    const stdout = scrubSecrets(result.stdout, secrets);
    const reason = gitFailureReason({ stderr, stdout, exitCode: result.exitCode, timedOut: result.timedOut });
    const detail = (stderr.trim() || stdout.trim()).slice(-1000);
    const how = result.timedOut ? "timed out" : result.exitCode !== null ? `exited with code ${result.exitCode}` : `was killed by ${result.signal ?? "a signal"}`;
    throw new GitError(`git ${subcommand} ${how} (${reason})${detail ? `: ${detail}` : ""}`, {
      subcommand,
      exitCode: result.exitCode,
      stderr,
      reason,
    });
  }
}

/**
 * The `-c` options and environment that hand credentials to git for one command: helpers from config are reset,
 * then one helper scoped to the URL's scheme and host reads them from the environment. Nothing for URLs that are
 * not http(s) (local paths, file://, ssh keys), or without credentials.
 */
export function credentialArgs(url: string, credentials: GitCredentials | undefined): { config: string[]; env: Record<string, string> } {
  if (credentials === undefined) return { config: [], env: {} };
  const password = credentials.token ?? credentials.password;
  const username = credentials.username ?? (credentials.token !== undefined ? "x-access-token" : undefined);
  if (username === undefined || password === undefined) throw new RangeError("credentials need a password or a token (and a username with a password)");
  for (const [name, value] of [["username", username], ["password", password]] as const) {
    // The credential protocol is line-based: a newline or NUL would let the value add fields of its own.
    if (/[\n\0]/.test(value)) throw new RangeError(`the git ${name} holds a newline or NUL`);
  }
  let scope: string;
  try {
    const parsed = new URL(url);
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return { config: [], env: {} };
    scope = `${parsed.protocol}//${parsed.host}`;
  } catch {
    return { config: [], env: {} }; // a path or scp-like ssh address: credentials do not apply
  }
  return {
    config: ["-c", "credential.helper=", "-c", `credential.${scope}.helper=${ENV_CREDENTIAL_HELPER}`],
    env: { [USERNAME_VAR]: username, [PASSWORD_VAR]: password },
  };
}

/** The URL without its user-info, and the credentials that were in it (decoded), if any. */
export function splitUrlCredentials(url: string): { url: string; credentials: GitCredentials | undefined } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return { url, credentials: undefined };
  }
  if ((parsed.protocol !== "http:" && parsed.protocol !== "https:") || (parsed.username === "" && parsed.password === "")) {
    return { url, credentials: undefined };
  }
  const username = decodeURIComponent(parsed.username);
  const password = decodeURIComponent(parsed.password);
  parsed.username = "";
  parsed.password = "";
  return { url: parsed.toString(), credentials: password === "" ? { token: username } : { username, password } };
}

function secretsOf(credentials: GitCredentials | undefined): string[] {
  if (credentials === undefined) return [];
  return [credentials.password, credentials.token, credentials.username].filter((s): s is string => s !== undefined && s !== "");
}

/**
 * `text` with every secret (as given and URL-encoded) and every URL's user-info replaced by "***". Secrets of
 * fewer than 4 characters are left alone: replacing "ab" everywhere would garble the message and hide nothing.
 */
export function scrubSecrets(text: string, secrets: readonly string[]): string {
  let out = text.replace(/([a-z][a-z0-9+.-]*:\/\/)[^/@\s]+@/gi, "$1***@");
  for (const secret of [...secrets].sort((a, b) => b.length - a.length)) {
    if (secret.length < 4) continue;
    for (const form of new Set([secret, encodeURIComponent(secret)])) out = out.split(form).join("***");
  }
  return out;
}

/** Why git failed, from its exit and messages (LC_ALL=C, so they are English). */
export function gitFailureReason(result: { stderr: string; stdout: string; exitCode: number | null; timedOut: boolean }): GitFailureReason {
  if (result.timedOut) return "timeout";
  const text = `${result.stderr}\n${result.stdout}`;
  const rules: Array<[GitFailureReason, RegExp]> = [
    ["not_a_repository", /not a git repository/i],
    [
      "authentication_failed",
      /Authentication failed|could not read (Username|Password)|terminal prompts disabled|Invalid username or password|HTTP Basic: Access denied|Permission denied \(publickey|The requested URL returned error: 40[13]\b/i,
    ],
    ["repository_not_found", /Repository not found|does not appear to be a git repository|The requested URL returned error: 404\b|repository '.*' does not exist/i],
    ["network", /Could not resolve host|Failed to connect|Connection refused|Connection timed out|Network is unreachable|Could not resolve hostname|Couldn't connect to server/i],
    ["rejected", /\[rejected\]|\[remote rejected\]|failed to push some refs|non-fast-forward/i],
    ["nothing_to_commit", /nothing to commit|nothing added to commit|no changes added to commit/i],
    ["identity_unknown", /Please tell me who you are|unable to auto-detect email address|empty ident name/i],
    ["conflict", /CONFLICT|would be overwritten by|Your local changes to the following files|needs merge|you need to resolve your current index first/i],
    ["already_exists", /already exists/i],
    ["unknown_ref", /did not match any file\(s\) known to git|Remote branch .* not found|invalid reference|unknown revision|not a valid object name|src refspec .* does not match any|ambiguous argument/i],
    ["path_not_found", /pathspec '.*' did not match any files/i],
  ];
  for (const [reason, pattern] of rules) if (pattern.test(text)) return reason;
  if (result.exitCode === 127) return "git_missing";
  return "other";
}

/**
 * A branch, remote or ref given as a separate argument must not start with "-" (git would read it as an option)
 * nor hold a NUL or newline; git checks the rest of ref syntax itself.
 */
function checkRefName(name: string, what: string): string {
  if (name === "" || name.startsWith("-") || /[\0\n]/.test(name)) throw new RangeError(`invalid git ${what}: ${JSON.stringify(name)}`);
  return name;
}

const CHANGE_OF: Record<string, GitChange | undefined> = {
  M: "modified",
  T: "type_changed",
  A: "added",
  D: "deleted",
  R: "renamed",
  C: "copied",
  U: "unmerged",
};

/**
 * `git status --porcelain=v2 --branch -z`: "# branch.*" headers, then "1" (changed), "2" (renamed or copied, the
 * original path in the next NUL-separated field), "u" (unmerged), "?" (untracked) and "!" (ignored) records.
 */
export function parseStatusV2(stdout: string): GitStatus {
  const status: GitStatus = { branch: null, commit: null, upstream: null, ahead: 0, behind: 0, staged: [], unstaged: [], untracked: [], conflicted: [], clean: true };
  const records = stdout.split("\0");
  for (let i = 0; i < records.length; i++) {
    const record = records[i]!;
    if (record === "") continue;
    if (record.startsWith("# ")) {
      const [key, ...values] = record.slice(2).split(" ");
      const value = values.join(" ");
      if (key === "branch.oid") status.commit = value === "(initial)" ? null : value;
      else if (key === "branch.head") status.branch = value === "(detached)" ? null : value;
      else if (key === "branch.upstream") status.upstream = value;
      else if (key === "branch.ab") {
        const match = /^\+(\d+) -(\d+)$/.exec(value);
        if (match) [status.ahead, status.behind] = [Number(match[1]), Number(match[2])];
      }
      continue;
    }
    const kind = record[0];
    if (kind === "?") {
      status.untracked.push(record.slice(2));
    } else if (kind === "1" || kind === "2") {
      // "1 XY sub mH mI mW hH hI path"; "2 XY sub mH mI mW hH hI Xscore path" + NUL + origPath
      const fields = record.split(" ");
      const xy = fields[1] ?? "..";
      const path = fields.slice(kind === "1" ? 8 : 9).join(" ");
      const from = kind === "2" ? records[++i] : undefined;
      const staged = CHANGE_OF[xy[0]!];
      const unstaged = CHANGE_OF[xy[1]!];
      if (staged) status.staged.push({ path, change: staged, ...(from !== undefined && (staged === "renamed" || staged === "copied") ? { from } : {}) });
      if (unstaged) status.unstaged.push({ path, change: unstaged });
    } else if (kind === "u") {
      // "u XY sub m1 m2 m3 mW h1 h2 h3 path"
      status.conflicted.push(record.split(" ").slice(10).join(" "));
    }
  }
  status.clean = status.staged.length + status.unstaged.length + status.untracked.length + status.conflicted.length === 0;
  return status;
}
