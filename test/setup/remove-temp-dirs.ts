// Runs in every test file: its temporary directories go when the file ends. Registered before the
// file's own hooks, so it runs after them (after hooks run in reverse), once servers have stopped.
import { afterAll } from 'vitest';
import { removeTempDirs } from '../helpers/temp-dir.js';

afterAll(() => removeTempDirs());
