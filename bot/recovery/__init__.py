"""Jobs whose holder is gone go back to the queue: the reaper, the unheld-job audit, requeue."""
