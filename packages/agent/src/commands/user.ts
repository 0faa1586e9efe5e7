import { readFile } from "node:fs/promises";

export interface ResolvedUser {
  uid: number;
  gid: number;
  name: string;
  home: string;
}

/** Thrown when the requested user does not exist; reported to the host as a spawn error. */
export class UnknownUserError extends Error {}

/**
 * Resolves a user name or numeric uid through the guest's /etc/passwd (read on every call: commands may have
 * added users since the last exec). A numeric uid without a passwd entry runs with gid = uid and HOME=/.
 */
export async function resolveUser(user: string | number, passwdPath = "/etc/passwd"): Promise<ResolvedUser> {
  const numeric = typeof user === "number" ? user : /^\d+$/.test(user) ? Number(user) : undefined;
  let passwd = "";
  try {
    passwd = await readFile(passwdPath, "utf8");
  } catch {
    // No passwd file: only numeric users can be resolved.
  }
  for (const line of passwd.split("\n")) {
    const [name, , uidText, gidText, , home] = line.split(":");
    if (name === undefined || uidText === undefined || gidText === undefined) continue;
    const uid = Number(uidText);
    if (numeric === undefined ? name === user : uid === numeric) {
      return { uid, gid: Number(gidText), name, home: home || "/" };
    }
  }
  if (numeric !== undefined) return { uid: numeric, gid: numeric, name: String(numeric), home: "/" };
  throw new UnknownUserError(`unknown user: ${String(user)}`);
}
