/*
 * guest-spawner: starts the agent's commands from a process that is cheap to fork.
 *
 * The agent is a Node process of about 60 MB. Forking it copies its page tables, and afterwards every page it
 * writes takes a copy-on-write fault; under TCG that made each command start cost 20-60 ms in the guest, against
 * 8 ms for a shell's fork and exec. This helper is a few hundred KB, started once with the agent (and so part of
 * every snapshot), and forks the commands instead.
 *
 * The command's stdio are ordinary pipes (unless it asks for a terminal), as with Node's own spawn, so
 * `echo x > /dev/stderr` works in the command (it would not with sockets). The agent takes its ends of the pipes
 * by opening /proc/<helper>/fd/<n>, then tells the helper to close its copies.
 *
 *     guest-spawner --serve
 *
 * Requests on stdin, one per line, fields separated by one space; bytes that may hold anything are hex:
 *     spawn <id> <stdin 0|1> <uid|-> <gid|-> <cwd-hex> <argc> <arg-hex>... <envc> <env-hex>...
 *     spawn-pty <id> <stdin 0|1> <rows> <cols> <uid|-> <gid|-> <cwd-hex> <argc> <arg-hex>... <envc> <env-hex>...
 *     release <id>
 *     resize <request-id> <pty-id> <rows> <cols>
 * Answers on stdout, one per line:
 *     spawned <id> <pid> <stdin-fd|-1> <stdout-fd> <stderr-fd|-1> the helper's fds of the agent's pipe ends
 *     failed <id> <errno> <step>                                  nothing was left running (or nothing resized)
 *     resized <request-id>
 *     exit <pid> <exit-code|-1> <signal-number|0>                 the command's process ended (it was reaped)
 * A command runs in a session of its own (setsid), so its process group id is its pid. Without a pipe for stdin it
 * reads /dev/null, and its OOM score adjustment is 0 whatever the helper's (the agent's keeper gives the helper -1000).
 * `uid`/`gid` switch user (supplementary groups dropped) before `cwd` is entered.
 *
 * Terminals (spawn-pty): the command's stdin, stdout and stderr are the slave of a new pseudo-terminal, which is
 * also its controlling terminal, with the given window size. The master cannot reach the agent the way a pipe does:
 * opening /proc/<helper>/fd/<n> of a pty master opens /dev/ptmx again, which makes a new terminal. So the helper
 * keeps the master and relays it to two pipes the agent takes as usual: the terminal's output (stdout; there is no
 * separate stderr, so the answer's stderr fd is -1) and, with stdin, its input. The relay reads the master only
 * while the agent reads its pipe, so a host that stops reading still stops the command. The terminal's output
 * pipe closes once no process holds the slave any more, or, as with ssh, once the command's own process has exited
 * and the terminal has been quiet for QUIET_BEFORE_HANGUP_MS: then the helper closes the master, which hangs the
 * terminal up, so a job an interactive shell left in the background cannot hold the command open. The helper hangs
 * up as well when the agent closes its end of the output (SIGHUP to the command), as a closed window does.
 * `resize` sets the window size of a terminal that is still open (TIOCSWINSZ: its foreground process group gets
 * SIGWINCH); errno ENOENT when there is none with that id.
 *
 * Exits when stdin closes (the agent is gone), killing the process group of every command it started that still runs.
 * Built static (gcc -static -Os -s) onto the system disk, so it runs in any root filesystem.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Arguments and environment are bounded by the kernel's ARG_MAX (2 MiB by default); hex doubles them. */
#define MAX_LINE (8 * 1024 * 1024)
#define MAX_ID 64
#define MAX_HELD 1024
/* Commands tracked for killing when the agent goes away: the agent's 256 at once, its file watches, with room. */
#define MAX_COMMANDS 1024
/* The agent runs at most 256 commands at once; a terminal more than that is refused (EMFILE). */
#define MAX_RELAYS 256
#define RELAY_BUFFER (16 * 1024)
/* struct winsize holds unsigned shorts. */
#define MAX_TERMINAL_SIDE 65535
/*
 * After a terminal's command exits, how long its master must have nothing to read before the helper hangs up on
 * what still holds the slave. Output the command wrote before it exited is readable long before that (the pty
 * moves it to the master within a scheduler tick), so this only delays the end when a background job holds on.
 */
#define QUIET_BEFORE_HANGUP_MS 250
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct held {
  char id[MAX_ID + 1];
  int fds[3];
};

static struct held held[MAX_HELD];

/* A terminal's master, relayed to and from the agent's pipes. Each direction holds at most one buffer. */
struct relay {
  char id[MAX_ID + 1];
  pid_t pid;      /* the command's process, the terminal's session leader */
  long long hangup_at_ms; /* once it has exited: when to hang up if the master stays quiet; 0 before */
  int master;
  int to_agent;   /* the write end of the output pipe */
  int from_agent; /* the read end of the input pipe; -1 without stdin, after its EOF or once the terminal closed */
  int output_ended;    /* the master read EIO: no process holds the slave any more */
  int terminal_closed; /* the master reported a hang-up: input has nowhere to go */
  size_t out_start, out_end; /* read from the master, not yet written to the agent */
  size_t in_start, in_end;   /* read from the agent, not yet written to the master */
  char out[RELAY_BUFFER];
  char in[RELAY_BUFFER];
};

static struct relay *relays[MAX_RELAYS];

/*
 * Commands started and not reaped yet. When the agent goes away (stdin closes: it exited or was killed), nobody can
 * read their output or learn their exit any more, and a restarted agent does not know them: their process groups
 * are killed then, so "the agent restarted" means "its commands are gone", not orphans running on unseen.
 */
static pid_t commands[MAX_COMMANDS];

static void remember_command(pid_t pid) {
  for (size_t i = 0; i < MAX_COMMANDS; i++) {
    if (commands[i] == 0) {
      commands[i] = pid;
      return;
    }
  }
}

static void forget_command(pid_t pid) {
  for (size_t i = 0; i < MAX_COMMANDS; i++) {
    if (commands[i] == pid) commands[i] = 0;
  }
}

static void kill_commands(void) {
  for (size_t i = 0; i < MAX_COMMANDS; i++) {
    if (commands[i] > 0) kill(-commands[i], SIGKILL);
  }
}

static void answer(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void answer(const char *format, ...) {
  va_list args;
  va_start(args, format);
  vprintf(format, args);
  va_end(args);
  fflush(stdout);
}

static int valid_id(const char *id) {
  size_t length = strlen(id);
  if (length == 0 || length > MAX_ID) return 0;
  for (size_t i = 0; i < length; i++) {
    char c = id[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-')) return 0;
  }
  return 1;
}

/* Decodes hex in place into a NUL-terminated string; NULL on a bad digit, odd length or an embedded NUL. */
static char *decode_hex(char *text) {
  size_t length = strlen(text);
  if (length % 2 != 0) return NULL;
  for (size_t i = 0; i < length; i += 2) {
    int value = 0;
    for (size_t j = 0; j < 2; j++) {
      char c = text[i + j];
      int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (digit < 0) return NULL;
      value = value * 16 + digit;
    }
    if (value == 0) return NULL;
    text[i / 2] = (char)value;
  }
  text[length / 2] = '\0';
  return text;
}

/* Parses "-" (unchanged: -1) or a decimal id. */
static int parse_id_number(const char *text, long *out) {
  if (strcmp(text, "-") == 0) {
    *out = -1;
    return 0;
  }
  if (*text < '0' || *text > '9') return -1;
  errno = 0;
  char *end = NULL;
  unsigned long value = strtoul(text, &end, 10);
  if (errno != 0 || *end != '\0' || value > 0x7fffffffUL) return -1;
  *out = (long)value;
  return 0;
}

static int parse_count(const char *text, size_t limit, size_t *out) {
  if (text == NULL || *text < '0' || *text > '9') return -1;
  char *end = NULL;
  unsigned long value = strtoul(text, &end, 10);
  if (*end != '\0' || value > limit) return -1;
  *out = (size_t)value;
  return 0;
}

/* In the child: reports errno and the failing step through the status pipe, then exits. */
static void child_failed(int status_fd, const char *step) {
  int error = errno;
  char message[64];
  int length = snprintf(message, sizeof message, "%d %s", error, step);
  if (write(status_fd, message, (size_t)length) < 0) {}
  _exit(127);
}

/* Sets this process's OOM score adjustment to 0 (the default), unless it already is. */
static int reset_oom_score_adj(void) {
  int fd = open("/proc/self/oom_score_adj", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  char current[16] = {0};
  ssize_t got = read(fd, current, sizeof current - 1);
  int result = 0;
  if (got <= 0) result = -1;
  else if (strcmp(current, "0\n") != 0 && (lseek(fd, 0, SEEK_SET) != 0 || write(fd, "0", 1) != 1)) result = -1;
  close(fd);
  return result;
}

/* execve with a PATH search over the command's own environment, like execvp: EACCES wins over ENOENT. */
static void exec_in_path(char **argv, char **envp) {
  const char *file = argv[0];
  if (strchr(file, '/') != NULL) {
    execve(file, argv, envp);
    return;
  }
  const char *path = DEFAULT_PATH;
  for (char **entry = envp; *entry != NULL; entry++) {
    if (strncmp(*entry, "PATH=", 5) == 0) path = *entry + 5;
  }
  int saw_eacces = 0;
  char candidate[PATH_MAX];
  for (const char *start = path;; ) {
    const char *end = strchr(start, ':');
    size_t dir_length = end == NULL ? strlen(start) : (size_t)(end - start);
    int length = dir_length == 0 ? snprintf(candidate, sizeof candidate, "%s", file)
                                 : snprintf(candidate, sizeof candidate, "%.*s/%s", (int)dir_length, start, file);
    if (length > 0 && (size_t)length < sizeof candidate) {
      execve(candidate, argv, envp);
      if (errno == EACCES) saw_eacces = 1;
    }
    if (end == NULL) break;
    start = end + 1;
  }
  errno = saw_eacces ? EACCES : ENOENT;
}

static void close_all(int *fds, size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (fds[i] >= 0) close(fds[i]);
    fds[i] = -1;
  }
}

static struct held *free_slot(void) {
  for (size_t i = 0; i < MAX_HELD; i++) {
    if (held[i].id[0] == '\0') return &held[i];
  }
  return NULL;
}

static struct relay **free_relay_slot(void) {
  for (size_t i = 0; i < MAX_RELAYS; i++) {
    if (relays[i] == NULL) return &relays[i];
  }
  return NULL;
}

static struct relay *find_relay(const char *id) {
  for (size_t i = 0; i < MAX_RELAYS; i++) {
    if (relays[i] != NULL && strcmp(relays[i]->id, id) == 0) return relays[i];
  }
  return NULL;
}

/* Parses a terminal's row or column count: 1 to MAX_TERMINAL_SIDE. */
static int parse_terminal_side(const char *text, unsigned short *out) {
  size_t value;
  if (parse_count(text, MAX_TERMINAL_SIDE, &value) != 0 || value == 0) return -1;
  *out = (unsigned short)value;
  return 0;
}

/* Opens a pty master with the given window size and finds its slave's path; errno set on failure. */
static int open_terminal(unsigned short rows, unsigned short cols, char *slave_path, size_t slave_path_size) {
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) return -1;
  struct winsize size = {.ws_row = rows, .ws_col = cols};
  int error = grantpt(master) != 0 || unlockpt(master) != 0 ? errno : ptsname_r(master, slave_path, slave_path_size);
  if (error == 0 && (ioctl(master, TIOCSWINSZ, &size) != 0 || fcntl(master, F_SETFL, O_NONBLOCK) != 0)) error = errno;
  if (error != 0) {
    close(master);
    errno = error;
    return -1;
  }
  return master;
}

/* In the child: makes the terminal's slave its controlling terminal and its stdin, stdout and stderr. */
static void enter_terminal(int status_fd, const char *slave_path, long uid) {
  int slave = open(slave_path, O_RDWR | O_NOCTTY);
  if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) != 0) child_failed(status_fd, "pty");
  if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0) child_failed(status_fd, "stdio");
  if (slave > 2) close(slave);
  /* Like login: the user owns its terminal, so it can open it again by name. A failure leaves it root's: the
   * command still has it open, and most programs never reopen it. */
  if (uid >= 0 && fchown(0, (uid_t)uid, (gid_t)-1) != 0) {}
}

static void spawn(char **fields, size_t count, int with_terminal) {
  /* spawn <id> <stdin> <uid> <gid> <cwd> <argc> <args>... <envc> <envs>...
   * spawn-pty <id> <stdin> <rows> <cols> <uid> <gid> <cwd> <argc> <args>... <envc> <envs>... */
  const size_t base = with_terminal ? 5 : 3; /* the index of <uid> */
  const char *id = count > 1 && valid_id(fields[1]) ? fields[1] : NULL;
  long uid, gid;
  size_t argc, envc;
  unsigned short rows = 0, cols = 0;
  if (count < base + 5 || id == NULL || (strcmp(fields[2], "0") != 0 && strcmp(fields[2], "1") != 0) ||
      (with_terminal && (parse_terminal_side(fields[3], &rows) != 0 || parse_terminal_side(fields[4], &cols) != 0)) ||
      parse_id_number(fields[base], &uid) != 0 || parse_id_number(fields[base + 1], &gid) != 0 ||
      parse_count(fields[base + 3], count - base - 4, &argc) != 0 || argc == 0 || base + 4 + argc >= count ||
      parse_count(fields[base + 4 + argc], count - base - 5 - argc, &envc) != 0 || base + 5 + argc + envc != count) {
    answer("failed %s %d request\n", id == NULL ? "-" : id, EINVAL);
    return;
  }
  if (with_terminal && find_relay(id) != NULL) {
    answer("failed %s %d request\n", id, EEXIST);
    return;
  }
  int wants_stdin = fields[2][0] == '1';
  char *cwd = decode_hex(fields[base + 2]);
  char **argv = calloc(argc + 1, sizeof(char *));
  char **envp = calloc(envc + 1, sizeof(char *));
  struct relay *relay = with_terminal ? calloc(1, sizeof *relay) : NULL;
  if (argv == NULL || envp == NULL || (with_terminal && relay == NULL)) {
    free(argv);
    free(envp);
    free(relay);
    answer("failed %s %d request\n", id, ENOMEM);
    return;
  }
  int bad = cwd == NULL;
  for (size_t i = 0; i < argc && !bad; i++) bad = (argv[i] = decode_hex(fields[base + 4 + i])) == NULL;
  for (size_t i = 0; i < envc && !bad; i++) bad = (envp[i] = decode_hex(fields[base + 5 + argc + i])) == NULL;
  struct held *slot = bad ? NULL : free_slot();
  struct relay **relay_slot = bad || !with_terminal ? NULL : free_relay_slot();
  if (bad || slot == NULL || (with_terminal && relay_slot == NULL)) {
    free(argv);
    free(envp);
    free(relay);
    answer("failed %s %d request\n", id, bad ? EINVAL : EMFILE);
    return;
  }

  /*
   * pipes[n][0] is the read end. Without a terminal the child's ends are stdin's read end and stdout's and
   * stderr's write ends. With one, the child uses the slave; the relay keeps stdin's read end and stdout's write
   * end (non-blocking: one slow reader must not stall the helper) and there is no stderr pipe.
   */
  int pipes[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
  int status[2] = {-1, -1};
  int master = -1;
  char slave_path[64] = {0};
  const char *step = NULL;
  for (int n = 0; n < 3 && step == NULL; n++) {
    if ((n == 0 && !wants_stdin) || (n == 2 && with_terminal)) continue;
    if (pipe2(pipes[n], O_CLOEXEC | (with_terminal ? O_NONBLOCK : 0)) != 0) step = "pipe";
  }
  if (step == NULL && with_terminal && (master = open_terminal(rows, cols, slave_path, sizeof slave_path)) < 0) step = "pty";
  if (step == NULL && pipe2(status, O_CLOEXEC) != 0) step = "pipe";
  pid_t pid = -1;
  if (step == NULL) {
    pid = fork();
    if (pid < 0) step = "fork";
  }
  if (pid == 0) {
    close(status[0]);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (setsid() < 0) child_failed(status[1], "setsid");
    /* The helper (and the agent) run with -1000, which the OOM killer never picks; a command must be an ordinary
     * candidate again, or a guest out of memory would have to kill plumbing (or panic). Raising it needs no
     * privilege, so this works for any user; it happens before the user switch all the same. */
    if (reset_oom_score_adj() != 0) child_failed(status[1], "oom_score_adj");
    if (with_terminal) {
      enter_terminal(status[1], slave_path, uid);
    } else {
      int in = wants_stdin ? pipes[0][0] : open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (in < 0 || dup2(in, 0) < 0 || dup2(pipes[1][1], 1) < 0 || dup2(pipes[2][1], 2) < 0) child_failed(status[1], "stdio");
    }
    if (uid >= 0 || gid >= 0) {
      if (setgroups(0, NULL) != 0 && errno != EPERM) child_failed(status[1], "setgroups");
    }
    if (gid >= 0 && setgid((gid_t)gid) != 0) child_failed(status[1], "setgid");
    if (uid >= 0 && setuid((uid_t)uid) != 0) child_failed(status[1], "setuid");
    if (chdir(cwd) != 0) child_failed(status[1], "chdir");
    exec_in_path(argv, envp);
    child_failed(status[1], "exec");
  }
  int error = errno;
  free(argv);
  free(envp);
  /* The parent keeps the agent's ends (stdin's write end, stdout's and stderr's read ends) and a relay's ends. */
  int child_ends[3] = {pipes[0][0], pipes[1][1], pipes[2][1]};
  int agent_ends[3] = {pipes[0][1], pipes[1][0], pipes[2][0]};
  if (!with_terminal) close_all(child_ends, 3);
  if (step != NULL) {
    close_all(agent_ends, 3);
    close_all(child_ends, 3);
    close_all(status, 2);
    if (master >= 0) close(master);
    free(relay);
    answer("failed %s %d %s\n", id, error, step);
    return;
  }
  close(status[1]);
  char report[64] = {0};
  ssize_t got;
  do got = read(status[0], report, sizeof report - 1);
  while (got < 0 && errno == EINTR);
  close(status[0]);
  if (got > 0) {
    /* The child failed before exec and exited: reap it here so no exit line follows for it. */
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    close_all(agent_ends, 3);
    close_all(child_ends, 3);
    if (master >= 0) close(master);
    free(relay);
    int child_error = atoi(report);
    const char *failed_step = strchr(report, ' ');
    answer("failed %s %d %s\n", id, child_error, failed_step == NULL ? "exec" : failed_step + 1);
    return;
  }
  remember_command(pid);
  if (with_terminal) {
    snprintf(relay->id, sizeof relay->id, "%s", id);
    relay->pid = pid;
    relay->master = master;
    relay->to_agent = pipes[1][1];
    relay->from_agent = pipes[0][0];
    *relay_slot = relay;
  }
  snprintf(slot->id, sizeof slot->id, "%s", id);
  memcpy(slot->fds, agent_ends, sizeof agent_ends);
  answer("spawned %s %d %d %d %d\n", id, (int)pid, agent_ends[0], agent_ends[1], agent_ends[2]);
}

static void release(char **fields, size_t count) {
  if (count != 2 || !valid_id(fields[1])) return;
  for (size_t i = 0; i < MAX_HELD; i++) {
    if (held[i].id[0] != '\0' && strcmp(held[i].id, fields[1]) == 0) {
      close_all(held[i].fds, 3);
      held[i].id[0] = '\0';
      return;
    }
  }
}

static void resize(char **fields, size_t count) {
  /* resize <request-id> <pty-id> <rows> <cols> */
  const char *id = count > 1 && valid_id(fields[1]) ? fields[1] : NULL;
  struct winsize size = {0};
  if (count != 5 || id == NULL || !valid_id(fields[2]) || parse_terminal_side(fields[3], &size.ws_row) != 0 ||
      parse_terminal_side(fields[4], &size.ws_col) != 0) {
    answer("failed %s %d request\n", id == NULL ? "-" : id, EINVAL);
    return;
  }
  struct relay *relay = find_relay(fields[2]);
  if (relay == NULL) answer("failed %s %d resize\n", id, ENOENT);
  else if (ioctl(relay->master, TIOCSWINSZ, &size) != 0) answer("failed %s %d resize\n", id, errno);
  else answer("resized %s\n", id);
}

/* Closing the master hangs the terminal up: whoever still has the slave open gets SIGHUP and then EIO. */
static void end_relay(struct relay **slot) {
  struct relay *relay = *slot;
  int fds[3] = {relay->master, relay->to_agent, relay->from_agent};
  close_all(fds, 3);
  free(relay);
  *slot = NULL;
}

/* The poll entries of a relay: master, to_agent, from_agent. An fd of -1 is skipped by poll. */
static void relay_poll_fds(const struct relay *relay, struct pollfd *fds) {
  int out_empty = relay->out_start == relay->out_end, in_empty = relay->in_start == relay->in_end;
  short master_events = (short)((out_empty && !relay->output_ended ? POLLIN : 0) |
                                (!in_empty && !relay->terminal_closed ? POLLOUT : 0));
  fds[0] = (struct pollfd){.fd = master_events == 0 ? -1 : relay->master, .events = master_events};
  /* Always watched: poll reports POLLERR on a pipe's write end once its reader, the agent, has closed it. */
  fds[1] = (struct pollfd){.fd = relay->to_agent, .events = out_empty ? 0 : POLLOUT};
  fds[2] = (struct pollfd){.fd = in_empty ? relay->from_agent : -1, .events = POLLIN};
}

static long long now_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static int would_block(void) {
  return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

/* Moves what can move without blocking. Returns 0 when the relay is over and was ended. */
static int step_relay(struct relay **slot, const struct pollfd *fds) {
  struct relay *relay = *slot;
  if (fds[1].revents & POLLERR) {
    /* The agent let go of the output (the command was cancelled): hang up, as a closed terminal window does. */
    end_relay(slot);
    return 0;
  }
  if (fds[0].revents & (POLLHUP | POLLERR)) {
    /* No process holds the slave now; what was written to it can still be read, input has nowhere to go. */
    relay->terminal_closed = 1;
    relay->in_start = relay->in_end = 0;
    if (relay->from_agent >= 0) close(relay->from_agent);
    relay->from_agent = -1;
  }
  if (fds[0].revents != 0 && relay->out_start == relay->out_end && !relay->output_ended) {
    ssize_t got = read(relay->master, relay->out, sizeof relay->out);
    if (got > 0) {
      relay->out_start = 0;
      relay->out_end = (size_t)got;
      if (relay->hangup_at_ms != 0) relay->hangup_at_ms = now_ms() + QUIET_BEFORE_HANGUP_MS;
    } else if (got == 0 || !would_block()) {
      relay->output_ended = 1; /* EIO: the last slave fd is closed and everything it wrote has been read */
    }
  }
  if (fds[2].revents != 0 && relay->from_agent >= 0 && relay->in_start == relay->in_end) {
    ssize_t got = read(relay->from_agent, relay->in, sizeof relay->in);
    if (got > 0) {
      relay->in_start = 0;
      relay->in_end = (size_t)got;
    } else if (got == 0 || !would_block()) {
      /* The host ended stdin. That is no end of the terminal: the command reads on (a shell waits for input). */
      close(relay->from_agent);
      relay->from_agent = -1;
    }
  }
  if (relay->out_start < relay->out_end) {
    ssize_t wrote = write(relay->to_agent, relay->out + relay->out_start, relay->out_end - relay->out_start);
    if (wrote > 0) relay->out_start += (size_t)wrote;
    else if (wrote < 0 && !would_block()) {
      end_relay(slot); /* EPIPE: the agent let go of the output */
      return 0;
    }
  }
  if (relay->in_start < relay->in_end && !relay->terminal_closed) {
    ssize_t wrote = write(relay->master, relay->in + relay->in_start, relay->in_end - relay->in_start);
    if (wrote > 0) relay->in_start += (size_t)wrote;
    else if (wrote < 0 && !would_block()) relay->in_start = relay->in_end; /* the terminal is gone: drop it */
  }
  if (relay->output_ended && relay->out_start == relay->out_end) {
    end_relay(slot);
    return 0;
  }
  return 1;
}

/*
 * Hangs up the terminal of a command that has exited once its master has been quiet long enough. Reads the master
 * once more first: what the command left there goes to the agent before anything is closed.
 */
static void hang_up_if_quiet(struct relay **slot, long long now) {
  struct relay *relay = *slot;
  if (relay->hangup_at_ms == 0 || now < relay->hangup_at_ms || relay->out_start != relay->out_end || relay->output_ended) return;
  ssize_t got = read(relay->master, relay->out, sizeof relay->out);
  if (got > 0) {
    relay->out_start = 0;
    relay->out_end = (size_t)got;
    relay->hangup_at_ms = now + QUIET_BEFORE_HANGUP_MS;
  } else if (got < 0 && would_block()) {
    end_relay(slot);
  } else {
    relay->output_ended = 1; /* EIO: nothing holds the slave after all; the next step ends the relay */
  }
}

/*
 * Milliseconds poll may sleep before a quiet terminal is due to be hung up; -1: none is. A relay with output the
 * agent has not taken yet waits for the agent instead (poll wakes up for that).
 */
static int next_hangup_timeout(long long now) {
  long long soonest = -1;
  for (size_t i = 0; i < MAX_RELAYS; i++) {
    const struct relay *relay = relays[i];
    if (relay == NULL || relay->hangup_at_ms == 0 || relay->out_start != relay->out_end || relay->output_ended) continue;
    long long left = relay->hangup_at_ms > now ? relay->hangup_at_ms - now : 0;
    if (soonest < 0 || left < soonest) soonest = left;
  }
  return (int)soonest;
}

static void handle_line(char *line) {
  /* Count the fields first: the argument list can be long. */
  size_t count = 1;
  for (char *c = line; *c != '\0'; c++) count += *c == ' ';
  char **fields = calloc(count + 1, sizeof(char *));
  if (fields == NULL) {
    answer("failed - %d request\n", ENOMEM);
    return;
  }
  size_t n = 0;
  for (char *field = line, *next; field != NULL; field = next) {
    next = strchr(field, ' ');
    if (next != NULL) *next++ = '\0';
    fields[n++] = field;
  }
  if (strcmp(fields[0], "spawn") == 0) spawn(fields, n, 0);
  else if (strcmp(fields[0], "spawn-pty") == 0) spawn(fields, n, 1);
  else if (strcmp(fields[0], "release") == 0) release(fields, n);
  else if (strcmp(fields[0], "resize") == 0) resize(fields, n);
  else answer("failed - %d request\n", EINVAL);
  free(fields);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    forget_command(pid);
    if (WIFEXITED(status)) answer("exit %d %d 0\n", (int)pid, WEXITSTATUS(status));
    else if (WIFSIGNALED(status)) answer("exit %d -1 %d\n", (int)pid, WTERMSIG(status));
    else continue;
    for (size_t i = 0; i < MAX_RELAYS; i++) {
      if (relays[i] != NULL && relays[i]->pid == pid) relays[i]->hangup_at_ms = now_ms() + QUIET_BEFORE_HANGUP_MS;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 2 || strcmp(argv[1], "--serve") != 0) {
    fprintf(stderr, "usage: guest-spawner --serve\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t children;
  sigemptyset(&children);
  sigaddset(&children, SIGCHLD);
  if (sigprocmask(SIG_BLOCK, &children, NULL) != 0) return 1;
  int signal_fd = signalfd(-1, &children, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd < 0) {
    perror("guest-spawner: signalfd");
    return 1;
  }
  size_t capacity = 64 * 1024, filled = 0;
  char *buffer = malloc(capacity);
  int discarding = 0; /* inside a line longer than MAX_LINE */
  if (buffer == NULL) return 1;
  static struct pollfd fds[2 + 3 * MAX_RELAYS];
  /* The slot of each relay polled, in the order of its entries (relays[] only changes after they are stepped). */
  static struct relay **polled[MAX_RELAYS];
  for (;;) {
    fds[0] = (struct pollfd){.fd = STDIN_FILENO, .events = POLLIN};
    fds[1] = (struct pollfd){.fd = signal_fd, .events = POLLIN};
    size_t relay_count = 0;
    for (size_t i = 0; i < MAX_RELAYS; i++) {
      if (relays[i] == NULL) continue;
      relay_poll_fds(relays[i], &fds[2 + 3 * relay_count]);
      polled[relay_count++] = &relays[i];
    }
    if (poll(fds, 2 + 3 * relay_count, next_hangup_timeout(now_ms())) < 0) {
      if (errno == EINTR) continue;
      perror("guest-spawner: poll");
      return 1;
    }
    if (fds[1].revents & POLLIN) {
      struct signalfd_siginfo info;
      while (read(signal_fd, &info, sizeof info) > 0) {}
      reap();
    }
    for (size_t i = 0; i < relay_count; i++) {
      if (step_relay(polled[i], &fds[2 + 3 * i])) hang_up_if_quiet(polled[i], now_ms());
    }
    if (!(fds[0].revents & (POLLIN | POLLHUP))) continue;
    if (filled == capacity) {
      size_t grown = capacity * 2 > MAX_LINE + 1 ? MAX_LINE + 1 : capacity * 2;
      if (grown == capacity) {
        /* Over the limit: drop what we have and the rest of this line. */
        filled = 0;
        discarding = 1;
      } else {
        char *bigger = realloc(buffer, grown);
        if (bigger == NULL) return 1;
        buffer = bigger;
        capacity = grown;
      }
    }
    ssize_t got = read(STDIN_FILENO, buffer + filled, capacity - filled);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      kill_commands();
      return 0;
    }
    filled += (size_t)got;
    size_t start = 0;
    for (size_t i = filled - (size_t)got; i < filled; i++) {
      if (buffer[i] != '\n') continue;
      buffer[i] = '\0';
      if (discarding) {
        discarding = 0;
        answer("failed - %d request\n", E2BIG);
      } else {
        handle_line(buffer + start);
      }
      start = i + 1;
    }
    memmove(buffer, buffer + start, filled - start);
    filled -= start;
  }
}
