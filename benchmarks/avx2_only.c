/* Run a process as if its CPU had AVX2 but no AVX-512, VNNI or AMX: loaded with LD_PRELOAD by
   avx2_only.py, which also shows the process a /proc/cpuinfo without those flags.

   Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, the "cpuid_fault" flag) makes every CPUID
   instruction of this thread and its children raise SIGSEGV; the handler runs the real CPUID and
   clears the feature bits of leaf 7, so oneDNN, ONNX Runtime's MLAS, libjpeg-turbo and PyTorch
   all pick their AVX2 kernels, as on a CPU that has nothing above AVX2. The program's own SIGSEGV
   handlers (Python's faulthandler, PyTorch's worker processes) are kept and called for real
   faults. CPUID faulting is reset by execve; LD_PRELOAD sets it up again in each new program. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <asm/prctl.h>

static struct sigaction next_act;  /* the SIGSEGV handler the program believes it installed */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static pid_t owner;  /* the process next_act belongs to (a vfork child shares its memory) */

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    if (leaf == 7 && sub == 0) {
        /* EBX: AVX512 F DQ IFMA PF ER CD BW VL; ECX: VBMI VBMI2 VNNI BITALG VPOPCNTDQ;
           EDX: 4VNNIW 4FMAPS VP2INTERSECT AMX-BF16 AVX512-FP16 AMX-TILE AMX-INT8 */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~((1u << 4) | (1u << 5));  /* AVX-VNNI, AVX512-BF16 */
    }
}

static void on_segv(int sig, siginfo_t *si, void *ctx) {
    greg_t *g = ((ucontext_t *)ctx)->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (si->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {  /* a CPUID that faulted */
        uint32_t r[4], leaf = (uint32_t)g[REG_RAX], sub = (uint32_t)g[REG_RCX];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        g[REG_RAX] = r[0]; g[REG_RBX] = r[1]; g[REG_RCX] = r[2]; g[REG_RDX] = r[3];
        g[REG_RIP] += 2;
        return;
    }
    /* a real fault: what the program installed, else the default (the fault repeats and kills) */
    if (next_act.sa_flags & SA_SIGINFO) {
        next_act.sa_sigaction(sig, si, ctx);
    } else if (next_act.sa_handler != SIG_DFL && next_act.sa_handler != SIG_IGN) {
        next_act.sa_handler(sig);
    } else {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction(SIGSEGV, &dfl, 0);
    }
}

/* The program's SIGSEGV handlers are kept behind ours (faulthandler, PyTorch's workers). A child
   of vfork (posix_spawn, popen) resets its handlers before exec in its parent's memory: those
   calls go straight to the kernel, or the parent's next_act would be lost. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig != SIGSEGV || getpid() != owner) return real_sigaction(sig, act, old);
    if (old) *old = next_act;
    if (act) next_act = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

static void forked(void) { owner = getpid(); }

__attribute__((constructor)) static void start(void) {
    owner = getpid();
    pthread_atfork(0, 0, forked);
    real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    next_act.sa_handler = SIG_DFL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    real_sigaction(SIGSEGV, &sa, 0);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}
