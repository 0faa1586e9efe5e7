/** Typed errors of the sandbox lifecycle. Each says what is wrong and what to do; none leaves anything changed. */
export class SandboxError extends Error {
  constructor(
    readonly code: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

export class SandboxNotFoundError extends SandboxError {
  constructor(id: string) {
    super("sandbox_not_found", `no sandbox ${id}`);
  }
}

export class SnapshotNotFoundError extends SandboxError {
  constructor(id: string) {
    super("snapshot_not_found", `no snapshot or template ${id}`);
  }
}

/** The operation does not apply in the sandbox's current state (e.g. resume of a running sandbox). */
export class SandboxStateError extends SandboxError {
  constructor(message: string) {
    super("invalid_state", message);
  }
}

/**
 * The sandbox runs, but its agent session was lost (the agent exited or the guest broke the session) and the engine
 * is reconnecting: nothing can reach the guest until the agent answers again. Retrying shortly is the remedy.
 */
export class SandboxUnhealthyError extends SandboxError {
  constructor(id: string, reason: string) {
    super("sandbox_unhealthy", `the agent of sandbox ${id} is restarting (${reason}); retry in a few seconds`);
  }
}

/** The snapshot was saved by another kernel, system disk, QEMU or device layout than this engine runs. */
export class SnapshotIncompatibleError extends SandboxError {
  constructor(
    readonly snapshotId: string,
    readonly differences: Array<{ field: string; saved: string; current: string }>,
  ) {
    super(
      "snapshot_incompatible",
      `snapshot ${snapshotId} cannot be restored by this engine: ` +
        differences.map((d) => `${d.field} was ${d.saved}, now ${d.current}`).join("; ") +
        ". Recreate the template (or take the snapshot again) with this engine.",
    );
  }
}

/** Deleting a snapshot that sandboxes or other snapshots still build on. */
export class SnapshotInUseError extends SandboxError {
  constructor(
    readonly snapshotId: string,
    readonly users: string[],
  ) {
    super("snapshot_in_use", `snapshot ${snapshotId} is still used by ${users.join(", ")}; delete or stop those first`);
  }
}

export class InvalidRequestError extends SandboxError {
  constructor(message: string) {
    super("invalid_request", message);
  }
}
