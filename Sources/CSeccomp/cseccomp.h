// libseccomp (Debian's libseccomp-dev): syscall and architecture names for
// checking profiles before a container gets them.
#include <seccomp.h>
