import { constants as fsConstants, open } from "node:fs";
import { readFile, readdir } from "node:fs/promises";
import { AGENT_PORT_NAME } from "@codecourier/protocol";
import { logProblem } from "../log.js";
import { fdPortIo, type PortIo } from "./port-io.js";

const virtioPortsDir = "/sys/class/virtio-ports";
const retryDelayMs = 20;
const complainEveryMs = 5_000;

/** Finds /dev/vportNpM whose sysfs name is `portName`, or undefined if no such port is visible (yet). */
export async function findPortDevice(portName = AGENT_PORT_NAME, sysDir = virtioPortsDir): Promise<string | undefined> {
  let ports: string[];
  try {
    ports = await readdir(sysDir);
  } catch {
    return undefined;
  }
  for (const port of ports) {
    const name = await readFile(`${sysDir}/${port}/name`, "utf8").catch(() => "");
    if (name.trim() === portName) return `/dev/${port}`;
  }
  return undefined;
}

/**
 * Opens the agent's port, waiting for it to appear: its name arrives from the host over the virtio control queue,
 * possibly a moment after the device exists. A port may be opened only once (EBUSY otherwise), so it is opened a
 * single time, read-write, and kept for the life of the process. A raw fd rather than a FileHandle: a FileHandle
 * that became unreachable would be closed by the garbage collector.
 */
export async function openAgentPort(portName = AGENT_PORT_NAME): Promise<{ device: string; io: PortIo }> {
  let lastComplaint = performance.now();
  for (;;) {
    const device = await findPortDevice(portName);
    let problem: unknown;
    if (device !== undefined) {
      try {
        const fd = await openFd(device, fsConstants.O_RDWR | fsConstants.O_NOCTTY);
        return { device, io: fdPortIo(fd) };
      } catch (error) {
        problem = error;
      }
    }
    if (performance.now() - lastComplaint > complainEveryMs) {
      lastComplaint = performance.now();
      logProblem(device ? `cannot open ${device}` : `still waiting for virtio port ${portName}`, problem);
    }
    await new Promise((resolve) => setTimeout(resolve, retryDelayMs));
  }
}

function openFd(path: string, flags: number): Promise<number> {
  return new Promise((resolve, reject) => open(path, flags, (error, fd) => (error ? reject(error) : resolve(fd))));
}
