import { read, write } from "node:fs";

/**
 * Byte-level access to the virtio-serial port. Separate from the session logic so tests can simulate the port's
 * connect / disconnect behaviour without a VM.
 */
export interface PortIo {
  /** Reads up to buffer.length bytes. 0 means "no host connected" (virtio-serial EOF), not end of stream. */
  read(buffer: Buffer): Promise<number>;
  /** Writes some prefix of `data`; returns how many bytes were written. */
  write(data: Uint8Array): Promise<number>;
}

/**
 * PortIo over an open file descriptor. fs.read/fs.write with position -1 use read(2)/write(2) on the current
 * position, which is what a character device needs; a blocking call runs in the libuv threadpool. `writeFd` exists
 * for tests, which emulate the port with two FIFOs (a FIFO's reader, too, sees EOF while no writer is connected).
 */
export function fdPortIo(fd: number, writeFd: number = fd): PortIo {
  return {
    read: (buffer) =>
      new Promise((resolve, reject) =>
        read(fd, buffer, 0, buffer.length, -1, (error, bytesRead) => (error ? reject(error) : resolve(bytesRead))),
      ),
    write: (data) =>
      new Promise((resolve, reject) =>
        write(writeFd, data, 0, data.length, -1, (error, written) => (error ? reject(error) : resolve(written))),
      ),
  };
}
