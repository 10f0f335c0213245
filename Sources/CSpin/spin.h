#ifndef MOE_CSPIN_H
#define MOE_CSPIN_H
// The processor's spin-wait hint, which Swift has no spelling for: it tells the core that this is a busy-wait
// loop, so the loop draws less power and leaves the core's resources to other work while it waits.
static inline void moe_spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
#endif
