import { readFileSync, rmSync, writeFileSync } from "node:fs";

/** Another engine (this process or another) already owns the data directory. */
export class DataDirLockedError extends Error {
  constructor(
    readonly lockFile: string,
    readonly ownerPid: number,
  ) {
    super(`the data directory is in use by another engine (pid ${ownerPid}, lock ${lockFile}); stop it or set CODECOURIER_HOME to another directory`);
    this.name = "DataDirLockedError";
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * One engine per data directory: a second one would re-attach to the first one's VMs and fight over their
 * sockets. The lock is a file holding the owner's pid; a lock whose owner died (kill -9) is taken over.
 */
export class DataDirLock {
  private constructor(readonly file: string) {}

  static acquire(file: string): DataDirLock {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        writeFileSync(file, String(process.pid), { flag: "wx" });
        return new DataDirLock(file);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      const owner = Number(readFileSync(file, "utf8").trim());
      if (Number.isInteger(owner) && owner > 0 && alive(owner)) throw new DataDirLockedError(file, owner);
      rmSync(file, { force: true }); // stale: its owner is gone
    }
    throw new Error(`could not take the data directory lock ${file}`);
  }

  release(): void {
    rmSync(this.file, { force: true });
  }
}
