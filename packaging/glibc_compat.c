/* Linked into the extension when it is built against an older glibc (SIAMESE_RS_SYSROOT, as the
 * wheels are; see build.rs). Both symbols are hidden: nothing outside the extension sees them.
 *
 * - gettid: Rust's std refers to it weakly; found in the sysroot's glibc 2.31 it would make the
 *   extension need GLIBC_2.30 (a weak reference still records the version). This is what glibc's
 *   own gettid does.
 * - __libc_single_threaded: the host's libstdc++.a (linked statically) was compiled against glibc
 *   2.32+, which exports this flag. 0 means "may be multi-threaded": libstdc++ then always uses
 *   atomic reference counts, which is correct in every process (only an optimisation is lost). */
#include <sys/syscall.h>
#include <sys/types.h>

long syscall(long number, ...);

__attribute__((visibility("hidden"))) pid_t gettid(void) { return (pid_t)syscall(SYS_gettid); }

__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
