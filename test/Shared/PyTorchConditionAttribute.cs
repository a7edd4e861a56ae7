namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Runs a test class or method only where a Python with PyTorch is found (<see cref="PyTorchReference"/>); elsewhere
/// MSTest reports it as skipped (outcome NotExecuted in TRX) with the reason, never as passed. Sibling of
/// <see cref="CudaConditionAttribute"/>.
/// </summary>
[AttributeUsage(AttributeTargets.Class | AttributeTargets.Method, AllowMultiple = false, Inherited = false)]
public sealed class PyTorchConditionAttribute : ConditionBaseAttribute
{
    /// <summary>Skips unless <see cref="PyTorchReference.IsAvailable"/>.</summary>
    public PyTorchConditionAttribute()
        : base(ConditionMode.Include)
    {
        IgnoreMessage = "PyTorch reference not available: " + PyTorchReference.UnavailableReason;
    }

    /// <inheritdoc />
    public override string GroupName => "PyTorch";

    /// <inheritdoc />
    public override bool IsConditionMet => PyTorchReference.IsAvailable;
}
