/** Helper thread for prepare-pool.ts: prepares one weight per task and transfers the result back. */
import { serve, transferring } from '../../util/worker-task.js';
import { prepareLinear, preparedBuffers } from './linear.js';
import type { PrepareTasks } from './prepare-pool.js';

serve<PrepareTasks>({
  prepare: ({ weight, format }) => {
    const prepared = prepareLinear(weight, format);
    return transferring(prepared, preparedBuffers(prepared));
  },
});
