"""Peak heap use of a call: glibc's `mallinfo2` (bytes in use, counting mmap'd blocks) sampled by a
thread; our forward and PyTorch's ops release the GIL, so the sampler sees both alike."""
import ctypes
import threading
import time

_libc = ctypes.CDLL('libc.so.6')


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
                 'keepcost')]


_libc.mallinfo2.restype = _MallInfo2


def in_use():
    "Bytes malloc has handed out and not taken back"
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


class PeakMemory:
    "Context manager: `.peak` is the highest heap use above the starting use, in MiB"
    def __init__(self, interval=2e-4): self.interval, self.peak = interval, 0.

    def __enter__(self):
        self.stop, self.base = False, in_use()
        self.top = self.base
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.top = max(self.top, in_use())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = (max(self.top, in_use()) - self.base) / 2**20
