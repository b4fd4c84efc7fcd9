"""Camera traps: MegaDetector detections and crops, sequences (events), decisions for blanks,
and the MegaDetector-JSON and Camtrap DP writers. The COCO Camera Traps reader is a data source
(:mod:`imgcls.data.sources.coco`)."""
