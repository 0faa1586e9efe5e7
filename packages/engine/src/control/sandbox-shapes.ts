import { SANDBOX_SHAPES } from "@codecourier/protocol/api";
import { InvalidRequestError } from "../sandboxes/errors.js";

/** A sandbox's vCPUs and RAM. */
export interface Shape {
  cpus: number;
  memoryMB: number;
}

/** The shape a create gets for what it asked: each dimension rounded up to the next step of SANDBOX_SHAPES. */
export function roundShape(requested: Shape): Shape {
  return { cpus: stepAtLeast(SANDBOX_SHAPES.cpus, requested.cpus, "cpu"), memoryMB: stepAtLeast(SANDBOX_SHAPES.memoryMB, requested.memoryMB, "memoryMB") };
}

function stepAtLeast(steps: readonly number[], value: number, name: string): number {
  const step = steps.find((candidate) => candidate >= value);
  if (step === undefined) throw new InvalidRequestError(`${name} ${value} is more than this host offers (at most ${steps.at(-1)})`);
  return step;
}

/** Root disks grow in whole GiB. */
export const DISK_STEP_MB = 1024;

/** The root disk a create gets: at least the template's (a filesystem cannot shrink), rounded up to DISK_STEP_MB. */
export function roundDiskMB(requestedMB: number | undefined, templateMB: number): number {
  if (requestedMB === undefined || requestedMB <= templateMB) return templateMB;
  return Math.ceil(requestedMB / DISK_STEP_MB) * DISK_STEP_MB;
}
