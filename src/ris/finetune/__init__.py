"""Fine-tuning: train the backbone's last blocks (or a head, or all of it) on the split's train images, select on
its val images, and re-embed the collection with the result (:mod:`ris.stages.finetune`)."""
