/* kaun — save and load model weights (SafeTensors) from any storage.
 * The umbrella header: includes every public header. */
#ifndef KAUN_H
#define KAUN_H

#include <kaun/common.h>
#include <kaun/error.h>
#include <kaun/tensor.h>
#include <kaun/ptree.h>
#include <kaun/safetensors.h>
#include <kaun/names.h>
#include <kaun/reader.h>
#include <kaun/checkpoint.h>
#include <kaun/hash.h>
#include <kaun/storage.h>
#include <kaun/io.h>
#include <kaun/http.h>
#include <kaun/hf.h>
#include <kaun/copy.h>
#include <kaun/cache.h>
#include <kaun/plugin.h>

#endif
