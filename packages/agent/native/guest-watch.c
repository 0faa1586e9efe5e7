/*
 * guest-watch: reports what changes under a path, for the agent's GET /v1/files/watch.
 *
 * Node's fs.watch cannot tell a create from a write, nor pair the two halves of a rename, so the agent runs this
 * helper, which reads inotify directly:
 *
 *     guest-watch [--recursive] <path>
 *
 * A directory is watched for its entries (with --recursive, every directory below it too, including ones created
 * or moved in later). Anything else is watched as a name: its parent directory is watched and only events that
 * name it are reported, so a file replaced by a rename (as atomic writes do) is still followed.
 *
 * Output on stdout, one line per event, fields separated by one space; paths are hex of their bytes, since a file
 * name may hold spaces and newlines:
 *     ready                                          every watch is in place; events from now on are reported
 *     create <dir 0|1> <path-hex>                    created, or moved in from outside the watched tree
 *     write 0 <path-hex>                             a file opened for writing was closed (IN_CLOSE_WRITE)
 *     remove <dir 0|1> <path-hex>                    deleted, or moved out of the watched tree
 *     rename <dir 0|1> <path-hex> <old-path-hex>     moved within the watched tree
 *     overflow                                       events were lost (kernel queue overflow, watch limit)
 *     error <errno> <step>                           before `ready` only: nothing is watched, exit code 1
 *
 * Writes are reported on close, not on each write(2): one event per writer however much it writes, sent when the
 * content is complete. A program that keeps a file open (a log it appends to) shows no write until it closes it.
 * A new file written by a program shows as `create` then `write`.
 *
 * After a watch is added to a directory that appeared while running, the directory is read and every entry found
 * is reported as created: `mkdir -p a/b/c && touch a/b/c/f` creates entries faster than watches can be added. An
 * entry created between the watch and the read can so be reported twice.
 *
 * The two halves of a rename (IN_MOVED_FROM, IN_MOVED_TO) are paired by their cookie. One rename(2) queues them one
 * right after the other, so an IN_MOVED_FROM followed by any other event, or by nothing within PAIR_WINDOW_MS, was
 * a move out of the watched tree (remove); an IN_MOVED_TO without its first half a move into it (create). Should
 * another CPU's event slip in between the two halves, the rename shows as a remove and a create: still the right
 * end state, and events always come in the order they happened. When the watched directory itself is deleted or
 * moved, `remove` is reported for it and the helper exits 0.
 *
 * Memory is bounded: at most MAX_WATCHES directories (beyond that `overflow`, or an ENOSPC error at start), paths
 * of at most MAX_PATH_BYTES (longer ones are `overflow`). When stdout is not read, the helper blocks and the
 * kernel's event queue fills up: the reader then gets `overflow`, not a backlog.
 *
 * Exits 0 when stdin closes, on SIGTERM or SIGINT, or when stdout is gone. Built static (gcc -static -Os -s) onto
 * the system disk, so it runs in any root filesystem.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_WATCHES 65536
#define MAX_PATH_BYTES 16384
#define PAIR_WINDOW_MS 20

#define DIR_EVENTS (IN_CREATE | IN_DELETE | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

/* A watched directory. Stored as parent + name, not a full path: renaming a directory then updates one entry. */
struct watch {
  int wd;
  int parent; /* wd of the parent directory; -1 for the root, whose name is the whole path */
  char *name;
};

/* The first half of a rename, waiting for its second half. */
struct pending_move {
  uint32_t cookie;
  int wd;
  int is_dir;
  char name[NAME_MAX + 1];
  struct timespec at;
};

static struct watch *watches; /* sorted by wd */
static size_t watch_count, watch_capacity;
static struct pending_move pending;
static int has_pending;
static int inotify_fd = -1;
static int recursive;
static int root_wd = -1;
/* Watching a single name: the root watch is its parent directory and only this entry is reported. */
static const char *only_name;

/* Directories whose entries are still to be read (and watched), and whether those entries are reported. */
static int *scan_queue;
static size_t scan_count, scan_capacity;

static int find_watch(int wd) {
  size_t low = 0, high = watch_count;
  while (low < high) {
    size_t middle = (low + high) / 2;
    if (watches[middle].wd == wd) return (int)middle;
    if (watches[middle].wd < wd) low = middle + 1;
    else high = middle;
  }
  return -1;
}

static int insert_watch(int wd, int parent, const char *name) {
  if (watch_count == watch_capacity) {
    size_t grown = watch_capacity == 0 ? 64 : watch_capacity * 2;
    struct watch *bigger = realloc(watches, grown * sizeof *watches);
    if (bigger == NULL) return -1;
    watches = bigger;
    watch_capacity = grown;
  }
  char *copy = strdup(name);
  if (copy == NULL) return -1;
  size_t at = 0;
  while (at < watch_count && watches[at].wd < wd) at++;
  memmove(&watches[at + 1], &watches[at], (watch_count - at) * sizeof *watches);
  watches[at] = (struct watch){.wd = wd, .parent = parent, .name = copy};
  watch_count++;
  return 0;
}

static void forget_watch(size_t index) {
  free(watches[index].name);
  memmove(&watches[index], &watches[index + 1], (watch_count - index - 1) * sizeof *watches);
  watch_count--;
}

/* The directory path of a watch into `out`; -1 if it does not fit or its chain of parents is broken. */
static int watch_path(int wd, char *out, size_t size) {
  /* Collect the chain root-first by walking up; depth is bounded by the number of watches. */
  int chain[64];
  size_t depth = 0;
  int *long_chain = NULL;
  int *links = chain;
  size_t links_capacity = sizeof chain / sizeof chain[0];
  for (int current = wd; current != -1;) {
    int index = find_watch(current);
    if (index < 0 || depth > watch_count) {
      free(long_chain);
      return -1;
    }
    if (depth == links_capacity) {
      size_t grown = links_capacity * 2;
      int *bigger = realloc(long_chain, grown * sizeof *bigger);
      if (bigger == NULL) {
        free(long_chain);
        return -1;
      }
      if (long_chain == NULL) memcpy(bigger, chain, sizeof chain);
      long_chain = links = bigger;
      links_capacity = grown;
    }
    links[depth++] = index;
    current = watches[index].parent;
  }
  size_t length = 0;
  int result = 0;
  for (size_t i = depth; i-- > 0 && result == 0;) {
    const char *name = watches[links[i]].name;
    size_t name_length = strlen(name);
    /* The root is the path as given; "/" as root must not give "//name". */
    int separator = i != depth - 1 && !(length == 1 && out[0] == '/');
    if (length + separator + name_length + 1 > size) result = -1;
    else {
      if (separator) out[length++] = '/';
      memcpy(out + length, name, name_length);
      length += name_length;
      out[length] = '\0';
    }
  }
  free(long_chain);
  return result;
}

/* `directory`/`name` into `out`; -1 if it does not fit. */
static int entry_path(int wd, const char *name, char *out, size_t size) {
  if (watch_path(wd, out, size) != 0) return -1;
  size_t length = strlen(out);
  int separator = !(length == 1 && out[0] == '/');
  if (length + separator + strlen(name) + 1 > size) return -1;
  if (separator) out[length++] = '/';
  strcpy(out + length, name);
  return 0;
}

static void put_hex(const char *text) {
  static const char digits[] = "0123456789abcdef";
  for (const unsigned char *c = (const unsigned char *)text; *c != '\0'; c++) {
    putchar(digits[*c >> 4]);
    putchar(digits[*c & 15]);
  }
}

static void report_overflow(void) {
  fputs("overflow\n", stdout);
}

/* One event line. `old_path` only for renames. */
static void report(const char *kind, int is_dir, const char *path, const char *old_path) {
  printf("%s %d ", kind, is_dir ? 1 : 0);
  put_hex(path);
  if (old_path != NULL) {
    putchar(' ');
    put_hex(old_path);
  }
  putchar('\n');
}

/* Whether an entry of the root directory is one this watch reports (all of them, unless a single name is watched). */
static int reported_name(int wd, const char *name) {
  return only_name == NULL || (wd == root_wd && strcmp(name, only_name) == 0);
}

static void report_entry(const char *kind, int is_dir, int wd, const char *name) {
  if (!reported_name(wd, name)) return;
  char path[MAX_PATH_BYTES];
  if (entry_path(wd, name, path, sizeof path) != 0) report_overflow();
  else report(kind, is_dir, path, NULL);
}

static int queue_scan(int wd) {
  if (scan_count == scan_capacity) {
    size_t grown = scan_capacity == 0 ? 64 : scan_capacity * 2;
    int *bigger = realloc(scan_queue, grown * sizeof *bigger);
    if (bigger == NULL) return -1;
    scan_queue = bigger;
    scan_capacity = grown;
  }
  scan_queue[scan_count++] = wd;
  return 0;
}

static int is_below(int wd, int ancestor);

/*
 * A directory already watched showed up at `parent`/`name`: it was moved there while its move out is still
 * waiting for a partner (`mv d /elsewhere; mv /elsewhere/d back`), so it now lives here, and is read again so its
 * entries are reported. Unless `parent` is inside it: the same directory seen twice through a bind mount.
 */
static int relocate_watch(int index, int parent, const char *name) {
  int wd = watches[index].wd;
  if (is_below(parent, wd)) return 0;
  char *copy = strdup(name);
  if (copy == NULL || queue_scan(wd) != 0) {
    free(copy);
    errno = ENOMEM;
    return -1;
  }
  free(watches[index].name);
  watches[index].name = copy;
  watches[index].parent = parent;
  return 1;
}

/*
 * Watches the directory `name` in the watched directory `parent` and queues it to be read. Returns 1 when it was
 * queued, 0 when it needs no watch (gone meanwhile, not a directory, a bind mount loop), -1 when the limit is
 * reached or memory runs out (errno says which).
 */
static int watch_directory(int parent, const char *name) {
  char path[MAX_PATH_BYTES];
  if (entry_path(parent, name, path, sizeof path) != 0 || strlen(path) >= PATH_MAX) {
    errno = ENAMETOOLONG;
    return -1;
  }
  if (watch_count >= MAX_WATCHES) {
    errno = ENOSPC;
    return -1;
  }
  int wd = inotify_add_watch(inotify_fd, path, DIR_EVENTS | IN_DONT_FOLLOW);
  if (wd < 0) return errno == ENOENT || errno == ENOTDIR || errno == EACCES || errno == ELOOP ? 0 : -1;
  int known = find_watch(wd);
  if (known >= 0) return relocate_watch(known, parent, name);
  if (insert_watch(wd, parent, name) != 0 || queue_scan(wd) != 0) {
    errno = ENOMEM;
    return -1;
  }
  return 1;
}

static int is_directory_entry(int wd, const struct dirent *entry) {
  if (entry->d_type != DT_UNKNOWN) return entry->d_type == DT_DIR;
  char path[MAX_PATH_BYTES];
  struct stat info;
  return entry_path(wd, entry->d_name, path, sizeof path) == 0 && lstat(path, &info) == 0 && S_ISDIR(info.st_mode);
}

/*
 * Reads the queued directories: each entry is reported as created when `report_entries` (they appeared while
 * running), and with --recursive each subdirectory is watched and read in turn. Returns -1 (errno set) only for
 * a failure to watch a directory; the caller decides whether that is fatal.
 */
static int scan_queued(int report_entries) {
  int result = 0;
  while (scan_count > 0) {
    int wd = scan_queue[--scan_count];
    char path[MAX_PATH_BYTES];
    if (watch_path(wd, path, sizeof path) != 0) continue;
    DIR *directory = opendir(path);
    if (directory == NULL) continue; /* removed meanwhile: its removal is an event of its own */
    struct dirent *entry;
    while ((entry = readdir(directory)) != NULL) {
      if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
      int is_dir = is_directory_entry(wd, entry);
      if (report_entries) report_entry("create", is_dir, wd, entry->d_name);
      if (is_dir && recursive && watch_directory(wd, entry->d_name) < 0) {
        if (!report_entries) {
          int error = errno;
          closedir(directory);
          scan_count = 0;
          errno = error;
          return -1;
        }
        report_overflow();
        result = -1;
      }
    }
    closedir(directory);
  }
  return result;
}

/* A directory that appeared while running (created or moved in): watched, and what it already holds reported. */
static void adopt_directory(int parent, const char *name, int report_entries) {
  if (!recursive) return;
  int added = watch_directory(parent, name);
  if (added < 0) report_overflow();
  else if (added > 0) scan_queued(report_entries);
}

static int is_below(int wd, int ancestor) {
  for (size_t steps = 0; wd != -1 && steps <= watch_count; steps++) {
    if (wd == ancestor) return 1;
    int index = find_watch(wd);
    if (index < 0) return 0;
    wd = watches[index].parent;
  }
  return 0;
}

/* The watch on directory `name` in `parent`, as an index; -1 if that directory is not watched. */
static int child_watch(int parent, const char *name) {
  for (size_t i = 0; i < watch_count; i++) {
    if (watches[i].parent == parent && strcmp(watches[i].name, name) == 0) return (int)i;
  }
  return -1;
}

/* A directory moved out of the watched tree: its watches and those below it would report stale paths. */
static void unwatch_tree(int top) {
  /* Mark first (parent links must stay intact while testing), then remove. */
  int *doomed = malloc(watch_count * sizeof *doomed);
  size_t count = 0;
  if (doomed == NULL) return;
  for (size_t i = 0; i < watch_count; i++) {
    if (is_below(watches[i].wd, top)) doomed[count++] = watches[i].wd;
  }
  for (size_t i = 0; i < count; i++) {
    inotify_rm_watch(inotify_fd, doomed[i]);
    int index = find_watch(doomed[i]);
    if (index >= 0) forget_watch((size_t)index);
  }
  free(doomed);
}

static long elapsed_ms(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (long)(now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

/* The first half of a rename that got no second half: a move out of the watched tree. */
static void settle_pending(void) {
  if (!has_pending) return;
  has_pending = 0;
  report_entry("remove", pending.is_dir, pending.wd, pending.name);
  if (pending.is_dir) {
    int index = child_watch(pending.wd, pending.name);
    if (index >= 0) unwatch_tree(watches[index].wd);
  }
}

static void moved_from(const struct inotify_event *event) {
  has_pending = 1;
  pending.cookie = event->cookie;
  pending.wd = event->wd;
  pending.is_dir = (event->mask & IN_ISDIR) != 0;
  snprintf(pending.name, sizeof pending.name, "%s", event->name);
  clock_gettime(CLOCK_MONOTONIC, &pending.at);
}

static void moved_to(const struct inotify_event *event) {
  int is_dir = (event->mask & IN_ISDIR) != 0;
  if (!has_pending || pending.cookie != event->cookie) {
    /* Moved in from outside: like a create, and a directory brings its entries along. */
    report_entry("create", is_dir, event->wd, event->name);
    if (is_dir) adopt_directory(event->wd, event->name, 1);
    return;
  }
  struct pending_move move = pending;
  has_pending = 0;
  int old_reported = reported_name(move.wd, move.name), new_reported = reported_name(event->wd, event->name);
  if (old_reported || new_reported) {
    char path[MAX_PATH_BYTES], old_path[MAX_PATH_BYTES];
    if (entry_path(event->wd, event->name, path, sizeof path) != 0 || entry_path(move.wd, move.name, old_path, sizeof old_path) != 0) {
      report_overflow();
    } else if (old_reported && new_reported) {
      report("rename", is_dir, path, old_path);
    } else {
      /* Watching one name: a rename onto it creates it, a rename away removes it. */
      report(new_reported ? "create" : "remove", is_dir, new_reported ? path : old_path, NULL);
    }
  }
  if (is_dir && recursive) {
    int index = child_watch(move.wd, move.name);
    if (index < 0) {
      adopt_directory(event->wd, event->name, 0);
    } else {
      char *name = strdup(event->name);
      if (name == NULL) {
        unwatch_tree(watches[index].wd);
        report_overflow();
        return;
      }
      free(watches[index].name);
      watches[index].name = name;
      watches[index].parent = event->wd;
    }
  }
}

/* Returns 1 when the watched path is gone and the helper should exit. */
static int handle_event(const struct inotify_event *event) {
  if (event->mask & IN_Q_OVERFLOW) {
    settle_pending();
    report_overflow();
    return 0;
  }
  if (find_watch(event->wd) < 0) return 0; /* a watch already forgotten */
  /*
   * Anything but its second half settles a pending first half, before this event is reported. That may forget
   * this event's own watch: it is then from inside a directory that left the tree.
   */
  if (has_pending && !((event->mask & IN_MOVED_TO) && event->cookie == pending.cookie)) settle_pending();
  int index = find_watch(event->wd);
  if (index < 0) return 0;
  if (event->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT)) {
    if (event->wd != root_wd) {
      /* A subdirectory's own removal was reported by its parent; moves keep the watch. */
      if (event->mask & IN_IGNORED) forget_watch((size_t)index);
      return 0;
    }
    if (only_name == NULL) report("remove", 1, watches[index].name, NULL);
    return 1;
  }
  if (event->len == 0) return 0;
  int is_dir = (event->mask & IN_ISDIR) != 0;
  if (event->mask & IN_CREATE) {
    report_entry("create", is_dir, event->wd, event->name);
    if (is_dir) adopt_directory(event->wd, event->name, 1);
  } else if (event->mask & IN_CLOSE_WRITE) {
    report_entry("write", 0, event->wd, event->name);
  } else if (event->mask & IN_DELETE) {
    report_entry("remove", is_dir, event->wd, event->name);
  } else if (event->mask & IN_MOVED_FROM) {
    moved_from(event);
  } else if (event->mask & IN_MOVED_TO) {
    moved_to(event);
  }
  return 0;
}

static int fail(const char *step) {
  printf("error %d %s\n", errno, step);
  fflush(stdout);
  return 1;
}

static int flush_output(void) {
  return fflush(stdout) == 0 && !ferror(stdout) ? 0 : -1;
}

int main(int argc, char **argv) {
  /* A path is never taken for an option: the agent gives absolute ones. */
  if (!(argc == 2 || (argc == 3 && strcmp(argv[1], "--recursive") == 0)) || argv[argc - 1][0] == '\0' || argv[argc - 1][0] == '-') {
    fprintf(stderr, "usage: guest-watch [--recursive] <path>\n");
    return 2;
  }
  recursive = argc == 3;
  /* A copy without trailing slashes ("/" stays "/"): the root's name starts every reported path. */
  char *root = strdup(argv[argc - 1]);
  if (root == NULL) return fail("memory");
  for (size_t length = strlen(root); length > 1 && root[length - 1] == '/'; length--) root[length - 1] = '\0';
  if (strlen(root) >= PATH_MAX) {
    errno = ENAMETOOLONG;
    return fail("stat");
  }

  signal(SIGPIPE, SIG_IGN); /* a vanished reader shows as a failed write, and we exit */
  sigset_t stops;
  sigemptyset(&stops);
  sigaddset(&stops, SIGTERM);
  sigaddset(&stops, SIGINT);
  if (sigprocmask(SIG_BLOCK, &stops, NULL) != 0) return fail("sigprocmask");
  int signal_fd = signalfd(-1, &stops, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd < 0) return fail("signalfd");
  static char output[64 * 1024];
  setvbuf(stdout, output, _IOFBF, sizeof output);

  inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd < 0) return fail("inotify");
  struct stat info;
  if (stat(root, &info) != 0) return fail("stat");
  const char *directory = root;
  if (!S_ISDIR(info.st_mode)) {
    char *slash = strrchr(root, '/');
    only_name = slash == NULL ? root : slash + 1;
    directory = slash == NULL ? "." : slash == root ? "/" : root;
    if (slash != NULL && slash != root) *slash = '\0';
    recursive = 0; /* only the parent directory's own entries matter */
  }
  /* The root may be a symlink to a directory (it is followed); the tree below it is not followed. */
  root_wd = inotify_add_watch(inotify_fd, directory, DIR_EVENTS);
  if (root_wd < 0) return fail("watch");
  if (insert_watch(root_wd, -1, directory) != 0) return fail("memory");
  if (only_name == NULL && recursive) {
    if (queue_scan(root_wd) != 0) return fail("memory");
    if (scan_queued(0) != 0) return fail("watch");
  }
  fputs("ready\n", stdout);
  if (flush_output() != 0) return 0;

  static char events[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
  for (;;) {
    struct pollfd fds[3] = {
        {.fd = inotify_fd, .events = POLLIN},
        {.fd = STDIN_FILENO, .events = POLLIN},
        {.fd = signal_fd, .events = POLLIN},
    };
    long wait_ms = -1;
    if (has_pending) {
      wait_ms = PAIR_WINDOW_MS - elapsed_ms(&pending.at);
      if (wait_ms < 0) wait_ms = 0;
    }
    if (poll(fds, 3, (int)wait_ms) < 0) {
      if (errno == EINTR) continue;
      return fail("poll");
    }
    if (fds[2].revents & POLLIN) {
      flush_output();
      return 0;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      /* Input means nothing; its end means the agent is done with us. */
      char discard[256];
      ssize_t got = read(STDIN_FILENO, discard, sizeof discard);
      if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) return 0;
    }
    if (fds[0].revents & POLLIN) {
      ssize_t got = read(inotify_fd, events, sizeof events);
      if (got < 0 && errno != EINTR && errno != EAGAIN) return fail("read");
      for (ssize_t offset = 0; offset < got;) {
        const struct inotify_event *event = (const struct inotify_event *)(events + offset);
        offset += (ssize_t)(sizeof *event + event->len);
        if (handle_event(event)) {
          flush_output();
          return 0;
        }
      }
    }
    if (has_pending && elapsed_ms(&pending.at) >= PAIR_WINDOW_MS) settle_pending();
    if (flush_output() != 0) return 0;
  }
}
