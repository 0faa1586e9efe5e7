import { randomBytes } from "node:crypto";
import { mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { EngineDatabase, LayerRow } from "../state/database.js";
import { runTool } from "../util/run-tool.js";

/**
 * Root disks are qcow2 chains: the guest image's read-only base ← a template's layer ← snapshot layers ← the
 * sandbox's writable layer. A layer is written by exactly one VM until it is frozen (by a snapshot); frozen layers
 * are immutable and shared by every sandbox and snapshot above them. Files live in `disks/<layer-id>.qcow2`.
 */
export class DiskLayers {
  readonly #virtualSizes = new Map<string, number>();

  constructor(
    readonly dir: string,
    private readonly db: EngineDatabase,
  ) {}

  path(layerId: string): string {
    return join(this.dir, `${layerId}.qcow2`);
  }

  /** A new, empty writable layer over `parent` (a layer id) or directly over the image base disk. */
  async createOver(parent: { layerId: string } | { basePath: string }): Promise<LayerRow> {
    await mkdir(this.dir, { recursive: true });
    const parentRow = "layerId" in parent ? this.db.layer(parent.layerId) : undefined;
    if ("layerId" in parent && !parentRow) throw new Error(`disk layer ${parent.layerId} is not recorded`);
    const basePath = parentRow?.base_path ?? (parent as { basePath: string }).basePath;
    const backing = parentRow ? this.path(parentRow.id) : basePath;
    const row: LayerRow = {
      id: `layer-${randomBytes(8).toString("hex")}`,
      parent_id: parentRow?.id ?? null,
      base_path: basePath,
      frozen: 0,
      depth: (parentRow?.depth ?? 0) + 1,
      created_at: Date.now(),
    };
    // -u: do not open the backing file (a running VM may hold it locked); the size comes from the base instead.
    const size = await this.#virtualSize(basePath);
    this.db.insertLayer(row);
    try {
      await runTool("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, "-u", this.path(row.id), String(size)]);
    } catch (error) {
      this.db.deleteLayer(row.id);
      await rm(this.path(row.id), { force: true });
      throw error;
    }
    return row;
  }

  /**
   * Rewrites a frozen layer as one standalone layer over the image base with the same content, so a chain stays
   * short however many snapshots a sandbox takes. The file is replaced atomically: layers and VMs that back onto
   * it see identical data, and its former parents lose this reference (garbage collection frees them).
   */
  async flatten(layerId: string): Promise<void> {
    const row = this.db.layer(layerId);
    if (!row || !row.frozen) throw new Error(`only a frozen layer can be flattened (${layerId})`);
    if (row.parent_id === null) return;
    const target = this.path(layerId);
    const temporary = `${target}.flatten-${process.pid}`;
    try {
      // -U: read the chain without taking locks; the layers are frozen, and running VMs still hold them open.
      await runTool("qemu-img", ["convert", "-U", "-q", "-f", "qcow2", "-O", "qcow2", "-B", row.base_path, "-F", "qcow2", target, temporary]);
      await rename(temporary, target);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
    this.db.reparentLayerOnBase(layerId);
  }

  /** Ids of `layerId` and all layers below it. */
  chain(layerId: string): string[] {
    const ids: string[] = [];
    for (let row = this.db.layer(layerId); row; row = row.parent_id ? this.db.layer(row.parent_id) : undefined) ids.push(row.id);
    return ids;
  }

  async remove(layerId: string): Promise<void> {
    await rm(this.path(layerId), { force: true });
    this.db.deleteLayer(layerId);
  }

  async #virtualSize(basePath: string): Promise<number> {
    let size = this.#virtualSizes.get(basePath);
    if (size === undefined) {
      size = await virtualDiskBytes(basePath);
      this.#virtualSizes.set(basePath, size);
    }
    return size;
  }
}

/** A disk image's virtual size: what the guest sees, and the most its qcow2 layers can grow to on the host. */
export async function virtualDiskBytes(path: string): Promise<number> {
  const info = JSON.parse((await runTool("qemu-img", ["info", "-U", "--output=json", path])).toString()) as { "virtual-size": number };
  return info["virtual-size"];
}
