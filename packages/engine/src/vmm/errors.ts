/** Typed VM lifecycle errors. Each says what happened and keeps the console log path for diagnosis. */
export class VmError extends Error {
  constructor(
    message: string,
    readonly vmId: string,
    readonly consoleLog?: string,
    options?: ErrorOptions,
  ) {
    super(consoleLog ? `${message} (guest console log: ${consoleLog})` : message, options);
    this.name = new.target.name;
  }
}

/** The VM did not reach a ready agent in time. */
export class VmBootTimeoutError extends VmError {}
/** QEMU exited (or was killed) while the VM was supposed to be running. */
export class VmCrashedError extends VmError {}
/** Invalid VM options: memory, CPUs, or paths. Nothing was started. */
export class VmConfigError extends VmError {}
/** The VM runs, but its agent session was lost and a new one is not open yet (the agent is restarting). */
export class VmAgentDownError extends VmError {}
