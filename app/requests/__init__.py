"""The request, with no views: the models (`Request`, `ExamLine`, `Institution`, call
reference counters), the NHS and S number checks, call references, and who may see which
request. Every area (intake, desk, workflow, transfers, printing, patients) imports this
package; it imports none of them."""
