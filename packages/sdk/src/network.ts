import { NotSupportedError } from "./errors.js";

const NOT_YET = "network policy arrives with the network issue; this server version does not offer it yet";

/**
 * `sandbox.network`: declared now so that code written against the SDK has its final shape, and fails loudly
 * (NotSupportedError) instead of silently doing nothing while the server lacks network policy.
 */
export class SandboxNetwork {
  constructor(readonly sandboxId: string) {}

  /** Let the sandbox reach these destinations. */
  async allow(..._destinations: unknown[]): Promise<never> {
    throw new NotSupportedError(`network.allow: ${NOT_YET}`);
  }

  /** Keep the sandbox from reaching these destinations. */
  async deny(..._destinations: unknown[]): Promise<never> {
    throw new NotSupportedError(`network.deny: ${NOT_YET}`);
  }

  /** The sandbox's network policy. */
  async policy(..._args: unknown[]): Promise<never> {
    throw new NotSupportedError(`network.policy: ${NOT_YET}`);
  }

  /** A tunnel into the sandbox. */
  async tunnel(..._args: unknown[]): Promise<never> {
    throw new NotSupportedError(`network.tunnel: ${NOT_YET}`);
  }

  /** Make a port of the sandbox reachable from outside. */
  async expose(..._args: unknown[]): Promise<never> {
    throw new NotSupportedError(`network.expose: ${NOT_YET}`);
  }

  /** Undo expose(). */
  async unexpose(..._args: unknown[]): Promise<never> {
    throw new NotSupportedError(`network.unexpose: ${NOT_YET}`);
  }
}
