// Result<T>, Error and Status are part of the public plugin API.
#pragma once
#include "pefnos/result.h"
