#include "gguf/mapped_file.h"

#include <cerrno>
#include <cstring>

#include "common/error.h"

#if defined(_WIN32)
#error "MappedFile: only the POSIX implementation exists; add a Windows one behind the same interface"
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace mn {

namespace {

// Closes the descriptor on every path out of open(); the mapping stays valid
// after close() per POSIX, so the descriptor is not kept.
struct FdGuard {
    int fd;
    ~FdGuard() {
        if (fd >= 0) ::close(fd);
    }
};

[[noreturn]] void fail(const std::string& path, const char* what, int err) {
    throw FileOpenError(path, std::string(what) + ": " + std::strerror(err), err);
}

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
    int fd;
    do {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) fail(path, "cannot open", errno);
    FdGuard guard{fd};

    struct stat st;
    if (::fstat(fd, &st) != 0) fail(path, "cannot stat", errno);
    if (!S_ISREG(st.st_mode)) throw FileOpenError(path, "not a regular file", S_ISDIR(st.st_mode) ? EISDIR : EINVAL);

    std::shared_ptr<MappedFile> m(new MappedFile());
    m->path_ = path;
    m->size_ = static_cast<uint64_t>(st.st_size);
    if (m->size_ == 0) return m;
    if (m->size_ > static_cast<uint64_t>(SIZE_MAX)) throw FileOpenError(path, "file too large to map", EFBIG);

    void* p = ::mmap(nullptr, static_cast<size_t>(m->size_), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) fail(path, "cannot mmap", errno);
    m->data_ = static_cast<const uint8_t*>(p);
    return m;
}

MappedFile::~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), static_cast<size_t>(size_));
}

}  // namespace mn
