/** Tokens per KV allocation block: the unit of the KV pool and of prefix-cache hashing. */
export const KV_BLOCK = 16;
