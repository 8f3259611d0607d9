/* A shared object that exports something, but not kaun_plugin_entry. */
#include <kaun/plugin.h>

KAUN_API int kaun_plugin_entry_misspelt(void);
KAUN_API int kaun_plugin_entry_misspelt(void) { return KAUN_PLUGIN_ABI_MAJOR; }
