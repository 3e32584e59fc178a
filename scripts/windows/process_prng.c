/* A stand-in bcryptprimitives.dll for Wine 8.0, which lacks ProcessPrng (Windows 10+), the
 * function Rust's standard library (and so cryptography's Rust core) takes random bytes from.
 * It forwards to RtlGenRandom (advapi32's SystemFunction036), which Wine has. Built by
 * scripts/windows-check with mingw-w64 and put beside python.exe; never used on Windows. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
    while (size > 0) {
        ULONG chunk = size > 0x10000000 ? 0x10000000 : (ULONG)size;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        size -= chunk;
    }
    return TRUE;
}
