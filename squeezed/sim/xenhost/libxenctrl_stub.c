/*
 * A stand-in libxenctrl for the simulated host.
 *
 * It exports the libxenctrl functions squeezed binds (squeezed/xen/xenctrl.py)
 * with their real Xen 4.17 signatures: it includes the real <xenctrl.h>, so
 * the compiler rejects any signature or struct drift. Instead of issuing
 * hypercalls it reads and writes a state file shared with the Python
 * simulated hypervisor (squeezed/sim/xenhost/hypervisor.py), named by the environment
 * variable SQUEEZED_SIM_XC_STATE at xc_interface_open time.
 *
 * State file layout (native byte order, all fields naturally aligned):
 *
 *   header, 64 bytes:
 *     0  u32 magic            SIM_MAGIC ("SQXC")
 *     4  u32 version          SIM_VERSION
 *     8  u64 generation       bumped by every write (change detection)
 *    16  u32 header_size      64, checked at open
 *    20  u32 record_size      32, checked at open
 *    24  u32 max_domains      number of record slots (4096)
 *    28  u32 n_domains        records[0 .. n_domains) are live
 *    32  u32 page_size_bytes  4096
 *    36  u32 reserved
 *    40  u64 total_pages      } what xc_physinfo reports
 *    48  u64 free_pages       }
 *    56  u64 scrub_pages      }
 *   then max_domains records of 32 bytes, the live ones first, sorted by
 *   ascending domid (writers keep them so; getinfolist relies on it):
 *     0  u32 domid
 *     4  u32 flags            XEN_DOMINF_* bits, as getinfolist reports them
 *     8  u64 tot_pages
 *    16  u64 max_pages        pages, like Xen: setmaxmem stores max_memkb >> 2
 *    24  u32 shadow_mib       what XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION reports
 *    28  u32 reserved
 *
 * Locking: flock(2) on the state file, shared for readers and exclusive for
 * writers (the Python side takes the same lock). flock locks belong to an
 * open file description, so they exclude across processes and between
 * separately opened descriptors in one process, and the kernel drops them if
 * the holder dies (a seqlock would leave readers spinning on an odd
 * generation). Each handle opens its own descriptor; a per-handle mutex
 * serialises threads sharing a handle, because flock on one descriptor cannot
 * tell them apart.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xenctrl.h>

#define SIM_STATE_ENV "SQUEEZED_SIM_XC_STATE"
#define SIM_MAGIC 0x43585153u /* "SQXC" read as little-endian bytes */
#define SIM_VERSION 1u
#define SIM_PAGE_SHIFT 12

struct sim_header {
    uint32_t magic;
    uint32_t version;
    uint64_t generation;
    uint32_t header_size;
    uint32_t record_size;
    uint32_t max_domains;
    uint32_t n_domains;
    uint32_t page_size_bytes;
    uint32_t reserved;
    uint64_t total_pages;
    uint64_t free_pages;
    uint64_t scrub_pages;
};

struct sim_domain {
    uint32_t domid;
    uint32_t flags;
    uint64_t tot_pages;
    uint64_t max_pages;
    uint32_t shadow_mib;
    uint32_t reserved;
};

_Static_assert(sizeof(struct sim_header) == 64, "header layout");
_Static_assert(sizeof(struct sim_domain) == 32, "record layout");

/* The real xc_interface is opaque to callers; this is the stub's own. */
struct xc_interface_core {
    int fd;
    void *map;
    size_t map_bytes;
    uint32_t max_domains;
    xentoollog_logger *logger;
    pthread_mutex_t lock;
};

static void sim_log(xentoollog_logger *logger, int errnoval, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Report an error as libxc does: through the caller's logger, else stderr. */
static void sim_log(xentoollog_logger *logger, int errnoval, const char *fmt, ...)
{
    int saved = errno;
    va_list ap;

    va_start(ap, fmt);
    if (logger && logger->vmessage) {
        logger->vmessage(logger, XTL_ERROR, errnoval, "xc", fmt, ap);
    } else {
        fputs("xc: error: ", stderr);
        vfprintf(stderr, fmt, ap);
        if (errnoval >= 0)
            fprintf(stderr, ": %s", strerror(errnoval));
        fputc('\n', stderr);
    }
    va_end(ap);
    errno = saved;
}

static struct sim_header *hdr(xc_interface *xch)
{
    return (struct sim_header *)xch->map;
}

static struct sim_domain *records(xc_interface *xch)
{
    return (struct sim_domain *)((char *)xch->map + sizeof(struct sim_header));
}

/* Take the handle mutex and the file lock; returns 0, or -1 with errno set. */
static int sim_lock(xc_interface *xch, int how)
{
    pthread_mutex_lock(&xch->lock);
    while (flock(xch->fd, how) != 0) {
        if (errno == EINTR)
            continue;
        int err = errno;
        pthread_mutex_unlock(&xch->lock);
        errno = err;
        return -1;
    }
    return 0;
}

static void sim_unlock(xc_interface *xch)
{
    int saved = errno;

    flock(xch->fd, LOCK_UN);
    pthread_mutex_unlock(&xch->lock);
    errno = saved;
}

/* Index of the live record for domid, or -1. Caller holds the lock. */
static long sim_find(xc_interface *xch, uint32_t domid)
{
    const struct sim_domain *r = records(xch);
    uint32_t n = hdr(xch)->n_domains;
    uint32_t lo = 0, hi = n < xch->max_domains ? n : xch->max_domains;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r[mid].domid < domid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < n && lo < xch->max_domains && r[lo].domid == domid) ? (long)lo : -1;
}

xc_interface *xc_interface_open(xentoollog_logger *logger,
                                xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    const char *path = getenv(SIM_STATE_ENV);
    struct sim_header h;
    struct stat st;
    xc_interface *xch;
    size_t need;
    int fd, err;

    (void)dombuild_logger;
    (void)open_flags;
    if (!path || !*path) {
        sim_log(logger, ENOENT, "simulated hypervisor: %s is not set", SIM_STATE_ENV);
        errno = ENOENT;
        return NULL;
    }
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        err = errno;
        sim_log(logger, err, "simulated hypervisor: cannot open %s", path);
        errno = err;
        return NULL;
    }
    if (fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof(h) ||
        pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
        sim_log(logger, -1, "simulated hypervisor: %s is not a state file", path);
        close(fd);
        errno = EPROTO;
        return NULL;
    }
    need = sizeof(h) + (size_t)h.max_domains * sizeof(struct sim_domain);
    if (h.magic != SIM_MAGIC || h.version != SIM_VERSION || h.header_size != sizeof(h) ||
        h.record_size != sizeof(struct sim_domain) || (size_t)st.st_size < need) {
        sim_log(logger, -1,
                "simulated hypervisor: %s: bad magic, version or layout "
                "(magic %#x version %u header %u record %u)",
                path, h.magic, h.version, h.header_size, h.record_size);
        close(fd);
        errno = EPROTO;
        return NULL;
    }
    xch = calloc(1, sizeof(*xch));
    if (!xch) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    xch->map = mmap(NULL, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (xch->map == MAP_FAILED) {
        err = errno;
        sim_log(logger, err, "simulated hypervisor: cannot map %s", path);
        free(xch);
        close(fd);
        errno = err;
        return NULL;
    }
    xch->fd = fd;
    xch->map_bytes = need;
    xch->max_domains = h.max_domains;
    xch->logger = logger;
    pthread_mutex_init(&xch->lock, NULL);
    return xch;
}

int xc_interface_close(xc_interface *xch)
{
    if (!xch)
        return 0;
    munmap(xch->map, xch->map_bytes);
    close(xch->fd);
    pthread_mutex_destroy(&xch->lock);
    free(xch);
    return 0;
}

int xc_physinfo(xc_interface *xch, xc_physinfo_t *info)
{
    const struct sim_header *h = hdr(xch);

    if (!info) {
        errno = EFAULT;
        return -1;
    }
    if (sim_lock(xch, LOCK_SH) != 0)
        return -1;
    memset(info, 0, sizeof(*info));
    info->threads_per_core = 1;
    info->cores_per_socket = 1;
    info->nr_cpus = 1;
    info->nr_nodes = 1;
    info->capabilities = XEN_SYSCTL_PHYSCAP_hvm | XEN_SYSCTL_PHYSCAP_pv;
    info->total_pages = h->total_pages;
    info->free_pages = h->free_pages;
    info->scrub_pages = h->scrub_pages;
    info->max_mfn = h->total_pages ? h->total_pages - 1 : 0;
    sim_unlock(xch);
    return 0;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain,
                          unsigned int max_domains, xc_domaininfo_t *info)
{
    const struct sim_domain *r = records(xch);
    uint32_t i, n;
    int count = 0;

    if (!info && max_domains) {
        errno = EFAULT;
        return -1;
    }
    if (sim_lock(xch, LOCK_SH) != 0)
        return -1;
    n = hdr(xch)->n_domains;
    if (n > xch->max_domains)
        n = xch->max_domains;
    for (i = 0; i < n && r[i].domid < first_domain; i++)
        ;
    for (; i < n && (unsigned int)count < max_domains; i++, count++) {
        xc_domaininfo_t *d = &info[count];

        memset(d, 0, sizeof(*d));
        d->domain = (domid_t)r[i].domid;
        d->flags = r[i].flags;
        d->tot_pages = r[i].tot_pages;
        d->max_pages = r[i].max_pages;
        d->nr_online_vcpus = 1;
        d->max_vcpu_id = 0;
        d->gpaddr_bits = 52;
    }
    sim_unlock(xch);
    return count;
}

int xc_domain_setmaxmem(xc_interface *xch, uint32_t domid, uint64_t max_memkb)
{
    long i;

    if (sim_lock(xch, LOCK_EX) != 0)
        return -1;
    i = sim_find(xch, domid);
    if (i < 0) {
        sim_unlock(xch);
        sim_log(xch->logger, ESRCH, "xc_domain_setmaxmem: no domain %u", domid);
        errno = ESRCH;
        return -1;
    }
    /* As Xen's XEN_DOMCTL_max_mem: KiB to pages, rounding down. */
    records(xch)[i].max_pages = max_memkb >> (SIM_PAGE_SHIFT - 10);
    hdr(xch)->generation++;
    sim_unlock(xch);
    return 0;
}

int xc_shadow_control(xc_interface *xch,
                      uint32_t domid,
                      unsigned int sop,
                      unsigned int *mb,
                      unsigned int mode)
{
    long i;

    (void)mode;
    if (sop != XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION || !mb) {
        sim_log(xch->logger, EOPNOTSUPP, "xc_shadow_control: op %u not simulated", sop);
        errno = EOPNOTSUPP;
        return -1;
    }
    if (sim_lock(xch, LOCK_SH) != 0)
        return -1;
    i = sim_find(xch, domid);
    if (i < 0) {
        sim_unlock(xch);
        sim_log(xch->logger, ESRCH, "xc_shadow_control: no domain %u", domid);
        errno = ESRCH;
        return -1;
    }
    *mb = records(xch)[i].shadow_mib;
    sim_unlock(xch);
    return 0;
}
