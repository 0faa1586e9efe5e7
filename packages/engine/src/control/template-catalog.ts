import type { NetworkPolicy } from "@codecourier/protocol/network";
import type { SandboxEngine } from "../sandboxes/sandbox-engine.js";
import { ApiError } from "../server/api-error.js";
import type { ControlStore } from "./control-store.js";

/**
 * Template names → saved template snapshots. A clone has its template's vCPUs and RAM, so each (name, version,
 * cpus, memoryMB) shape is its own template snapshot, made on first use (a cold boot: seconds under KVM, tens of
 * seconds under TCG) and kept warm by the engine's pool from then on. Creates of a shape being made wait for it.
 *
 * Names known so far: `base`, the guest image's Debian root (version 1). The templates issue adds user templates.
 */
export class TemplateCatalog {
  readonly #making = new Map<string, Promise<string>>();

  /** Each template's versions and the network policy its sandboxes get unless they are created with their own. */
  static readonly KNOWN: Readonly<Record<string, { versions: number[]; network: NetworkPolicy }>> = {
    base: { versions: [1], network: { internet: false, allow: [], deny: [] } },
  };

  /** The default network policy of a template (name as resolved by resolveName). */
  static networkPolicy(name: string): NetworkPolicy {
    const known = TemplateCatalog.KNOWN[name];
    if (!known) throw new ApiError("not_found", `no template named ${JSON.stringify(name)}`);
    return known.network;
  }

  constructor(
    private readonly engine: SandboxEngine,
    private readonly store: ControlStore,
  ) {}

  /** Parses "name" or "name@version" and checks that it exists; 404 naming it otherwise. */
  static resolveName(template: string): { name: string; version: number } {
    const [name = "", versionText] = template.split("@");
    const known = TemplateCatalog.KNOWN[name];
    if (known === undefined) {
      throw new ApiError("not_found", `no template named ${JSON.stringify(name)} (known: ${Object.keys(TemplateCatalog.KNOWN).join(", ")})`);
    }
    const version = versionText === undefined ? Math.max(...known.versions) : Number(versionText);
    if (!known.versions.includes(version)) {
      throw new ApiError("not_found", `template ${name} has no version ${versionText} (versions: ${known.versions.join(", ")})`);
    }
    return { name, version };
  }

  /** The template snapshot of this shape, made (and its pool started) if it does not exist yet. */
  async snapshotFor(name: string, version: number, cpus: number, memoryMB: number): Promise<string> {
    const key = `${name}@${version}/${cpus}/${memoryMB}`;
    const existing = await this.store.templateSnapshot(name, version, cpus, memoryMB);
    if (existing !== undefined && this.engine.canRestore(existing)) {
      this.engine.warmPool(existing);
      return existing;
    }
    // Saved with an older image or QEMU (after an upgrade): made again below. The old one goes if nothing uses it.
    if (existing !== undefined && this.engine.hasSnapshot(existing)) await this.engine.deleteSnapshot(existing).catch(() => {});
    let making = this.#making.get(key);
    if (making === undefined) {
      making = (async () => {
        const template = await this.engine.createTemplate({ cpus, memoryMiB: memoryMB });
        await this.store.recordTemplate(name, version, cpus, memoryMB, template.id);
        this.engine.warmPool(template.id);
        return template.id;
      })().finally(() => this.#making.delete(key));
      this.#making.set(key, making);
    }
    return making;
  }
}
