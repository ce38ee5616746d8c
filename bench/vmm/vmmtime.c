/*
 * vmmtime: runs a VMM (or any command) and times it from the host side, the
 * same way for every VMM. Built static by tests/testbed/bench-vmm.sh and
 * run inside the testbed, where busybox has no sub-second clock.
 *
 *   vmmtime [-t SECONDS] [-m GUEST_KIB] [-v] MARKER OUTFILE -- CMD [ARGS...]
 *
 * CMD's stdout and stderr go through a pipe into OUTFILE; -t kills CMD
 * and its process group (SIGKILL) after SECONDS. MARKER "@uptime" matches a line that is exactly
 * /proc/uptime's format ("<seconds> <seconds>"), i.e. the output of
 * `cat /proc/uptime` in the guest. Prints one line:
 *   wall_ms=<exec to exit> marker_ms=<exec to the first output line that
 *   contains MARKER, -1 if none> maxrss_kib=<ru_maxrss of CMD, from wait4>
 *   status=<exit code, or 128+signal>
 * With -m, 500 ms after the marker line it reads /proc/<pid>/smaps once for
 * CMD and each of its descendants, finds the one that maps the guest RAM
 * (CMD itself, or a child such as duet's jailed VMM) and adds, for it,
 *   rss_kib=<sum of Rss over all mappings>
 *   guest_kib=<Rss of the mappings whose Size is exactly GUEST_KIB, i.e.
 *   the guest RAM mapping of a VM with that much memory>
 *   hwm_kib=<VmHWM of /proc/<pid>/status at that moment>
 *   vmm_is_child=<1 if that process is not CMD itself>
 * and, for the rest of the tree, others_rss_kib=<their summed Rss> and
 * others=<how many>.
 * so both VMMs' overhead is measured identically (run a workload that
 * sleeps after printing the marker). -v lists the mappings of 16 MiB or
 * more at that moment on stderr.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Sums Rss over all mappings, and over those whose Size is guest_kib. */
static int verbose;

/* Whether line matches marker ("@uptime": "<float> <float>" and nothing else). */
static int matches(const char *line, const char *marker) {
    if (strcmp(marker, "@uptime") == 0) {
        double a, b;
        int n = -1;
        if (sscanf(line, "%lf %lf%n", &a, &b, &n) != 2 || n < 0) return 0;
        while (line[n] == ' ' || line[n] == '\r') n++;
        return line[n] == 0 && strchr(line, '.') != NULL;
    }
    return strstr(line, marker) != NULL;
}

static int sample_smaps(pid_t pid, long guest_kib, long *rss, long *guest, long *hwm) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long size = -1, v;
    char header[512] = "";
    *rss = 0;
    *guest = 0;
    while (fgets(line, sizeof line, f)) {
        if (strchr(line, '-') && strchr(line, '-') < strchr(line, ' ') && line[0] != ' ') {
            snprintf(header, sizeof header, "%s", line);
        } else if (sscanf(line, "Size: %ld kB", &v) == 1) {
            size = v;
        } else if (sscanf(line, "Rss: %ld kB", &v) == 1) {
            *rss += v;
            if (verbose && size >= 16384)
                fprintf(stderr, "vmmtime: Size %ld kB Rss %ld kB %s", size, v, header);
            if (size == guest_kib) *guest += v;
        }
    }
    fclose(f);
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    *hwm = -1;
    if (f) {
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %ld kB", &v) == 1) *hwm = v;
        fclose(f);
    }
    return 0;
}

/* Parent pid of pid, from /proc/<pid>/stat (-1 if gone). */
static pid_t parent_of(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses. */
    char *close_paren = strrchr(buf, ')');
    int ppid;
    if (!close_paren || sscanf(close_paren + 1, " %*c %d", &ppid) != 1) return -1;
    return ppid;
}

static int descends_from(pid_t p, pid_t root) {
    for (int depth = 0; p > 1 && depth < 64; depth++) {
        if (p == root) return 1;
        p = parent_of(p);
    }
    return p == root;
}

/* Samples the process of root's tree (root included) that maps the guest
 * RAM (a jailed VMM is a child of the command): its rss, guest and hwm; the
 * other processes' summed Rss go to *others and their count to *nothers. */
static int sample_tree(pid_t root, long guest_kib, long *rss, long *guest, long *hwm,
                       long *others, int *nothers, pid_t *vmm) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    struct dirent *e;
    *rss = *guest = *hwm = -1;
    *others = 0;
    *nothers = 0;
    *vmm = -1;
    while ((e = readdir(d))) {
        pid_t p = (pid_t)atoi(e->d_name);
        if (p <= 0 || !descends_from(p, root)) continue;
        long r, g, h;
        if (sample_smaps(p, guest_kib, &r, &g, &h) != 0) continue;
        if (g > 0 && *vmm < 0) {
            *rss = r;
            *guest = g;
            *hwm = h;
            *vmm = p;
        } else {
            *others += r;
            (*nothers)++;
        }
    }
    closedir(d);
    if (*vmm < 0) {
        /* No process maps the guest RAM: report CMD itself, nothing beside it. */
        *others = 0;
        *nothers = 0;
        return sample_smaps(root, guest_kib, rss, guest, hwm);
    }
    return 0;
}

int main(int argc, char **argv) {
    long guest_kib = -1, timeout_s = 0;
    int a = 1;
    for (;;) {
        if (a + 1 < argc && strcmp(argv[a], "-m") == 0) {
            guest_kib = atol(argv[a + 1]);
            a += 2;
        } else if (a + 1 < argc && strcmp(argv[a], "-t") == 0) {
            timeout_s = atol(argv[a + 1]);
            a += 2;
        } else if (a < argc && strcmp(argv[a], "-v") == 0) {
            verbose = 1;
            a += 1;
        } else {
            break;
        }
    }
    if (argc - a < 4 || strcmp(argv[a + 2], "--") != 0) {
        fprintf(stderr, "usage: vmmtime [-t SECONDS] [-m GUEST_KIB] [-v] MARKER OUTFILE -- CMD [ARGS...]\n");
        return 2;
    }
    const char *marker = argv[a];
    FILE *out = fopen(argv[a + 1], "w");
    if (!out) {
        perror(argv[a + 1]);
        return 2;
    }
    char **cmd = &argv[a + 3];
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        return 2;
    }
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        setpgid(0, 0); /* -t kills the whole group */
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execvp(cmd[0], cmd);
        perror(cmd[0]);
        _exit(127);
    }
    close(p[1]);
    double t_marker = -1, t_sample = -1;
    long rss = -1, guest = -1, hwm = -1, others = 0;
    int nothers = 0;
    pid_t vmm = -1;
    char line[4096];
    size_t len = 0;
    char buf[4096];
    int killed = 0;
    for (;;) {
        int timeout = -1;
        int sampling = t_marker >= 0 && guest_kib >= 0 && rss < 0;
        if (sampling) {
            double left = t_marker + 500 - now_ms();
            timeout = left > 0 ? (int)left : 0;
        }
        if (timeout_s > 0 && !killed) {
            double left = t0 + timeout_s * 1e3 - now_ms();
            int l = left > 0 ? (int)left : 0;
            if (timeout < 0 || l < timeout) timeout = l;
        }
        struct pollfd pfd = {.fd = p[0], .events = POLLIN};
        int r = poll(&pfd, 1, timeout);
        if (r < 0 && errno == EINTR) continue;
        if (r == 0 && timeout_s > 0 && !killed && now_ms() >= t0 + timeout_s * 1e3) {
            kill(-pid, SIGKILL);
            killed = 1;
            continue;
        }
        if (r == 0 && sampling) {
            if (sample_tree(pid, guest_kib, &rss, &guest, &hwm, &others, &nothers, &vmm) == 0)
                t_sample = now_ms() - t0;
            else rss = 0;
            continue;
        }
        ssize_t n = read(p[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        double t = now_ms();
        fwrite(buf, 1, n, out);
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == '\n' || len == sizeof line - 1) {
                line[len] = 0;
                if (t_marker < 0 && matches(line, marker)) t_marker = t;
                len = 0;
            } else {
                line[len++] = buf[i];
            }
        }
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
    }
    double t_end = now_ms();
    fclose(out);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("wall_ms=%.1f marker_ms=%.1f maxrss_kib=%ld status=%d%s", t_end - t0,
           t_marker < 0 ? -1.0 : t_marker - t0, ru.ru_maxrss, code, killed ? " timed_out=1" : "");
    if (guest_kib >= 0)
        printf(" rss_kib=%ld guest_kib=%ld hwm_kib=%ld sample_ms=%.1f vmm_is_child=%d"
               " others_rss_kib=%ld others=%d",
               rss, guest, hwm, t_sample, vmm > 0 && vmm != pid, others, nothers);
    printf("\n");
    return 0;
}
